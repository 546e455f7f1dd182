// The experiment configuration: one YAML file with sections data, model, diffusion, training and
// logging, plus `--set section.key=value` overrides. Every key has a default here; unknown keys,
// wrong types, unknown names and out-of-range values are ConfigErrors that name the key. Named
// choices are read into enums once, here: nothing else compares config strings.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/sample_order.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "diffusion/types.hpp"
#include "model/unet_config.hpp"
#include "parallel/rank_device.hpp"

namespace difftrain::train {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// model.channels_last: auto | true | false.
enum class ChannelsLast { automatic, on, off };
// diffusion.loss, each a LossSpec (make_loss_spec in setup.hpp): the hybrid L_simple + lambda
// L_vlb, L_simple alone, L_vlb rescaled by T, or L_vlb as is.
enum class Loss { hybrid, simple, vlb, vlb_unscaled };
// training.precision: autocast of the network's forward to bf16 or fp16 (with loss scaling).
enum class Precision { fp32, bf16, fp16 };
// training.tf32: whether fp32 convolutions (cuDNN) and matmuls (cuBLAS) on a GPU may round their
// inputs to TF32. default leaves LibTorch's choice: convolutions yes, matmuls no.
enum class Tf32 { library_default, on, off };
std::string to_string(ChannelsLast v);
std::string to_string(Loss v);
std::string to_string(Precision v);
std::string to_string(Tf32 v);

struct DataConfig {
  std::string train;       // manifest.json of the training shards
  std::string validation;  // manifest.json of held-out shards ("" = none)
  data::LastBatch last_batch = data::LastBatch::drop;  // drop | wrap
  bool random_flip = false;
  int64_t pad_to = 0;  // pad images to this size (e.g. 28 -> 32) when they do not halve cleanly
  bool class_conditional = false;
  int64_t prefetch = 4;
};

struct ModelConfig {
  int64_t image_size = 0;   // 0 = from the data (after data.pad_to); else must match it
  int64_t in_channels = 0;  // 0 = from the data manifest; else must match it
  int64_t num_classes = 0;  // with data.class_conditional: 0 = from the data; else must match it
  int64_t model_channels = 128;
  std::vector<double> channel_mult{1, 2, 2, 2};  // model_channels x each: whole channels
  int64_t num_res_blocks = 3;
  std::vector<int64_t> attention_resolutions{16, 8};
  int64_t num_heads = 4;
  int64_t num_head_channels = -1;
  double dropout = 0.0;
  bool use_scale_shift_norm = true;
  bool conv_resample = true;
  // guided-diffusion's architecture options (model/unet_config.hpp): up / down ResBlocks between
  // levels, and q, k, v split before the attention heads. Off: improved-diffusion's UNet.
  bool resblock_updown = false;
  bool use_new_attention_order = false;
  // > 0: an upsampler (guided-diffusion's super-resolution model) of the data's images from
  // copies of them area-downsampled to low_res_size x low_res_size, its input while training,
  // evaluating and sampling (difftrain sample --low-res). 0 = an ordinary model.
  int64_t low_res_size = 0;
  // Noise conditioning augmentation (Ho et al. 2022; Imagen) for an upsampler: in training, its
  // low-resolution image is noised to a random level of the diffusion's forward process (up to
  // training.low_res_noise_max) and the model is told the level; in sampling, a chosen level
  // (difftrain sample --low-res-noise). Makes a cascade robust to its base model's artefacts.
  bool low_res_noise = false;
  // Gradient checkpointing (improved-diffusion's use_checkpoint): the ResBlocks and attention
  // blocks recompute their activations in backward instead of keeping them. Less memory, about a
  // third more compute; the same results. Changing it on resume is fine.
  bool use_checkpoint = false;
  // A classifier's pooling (difftrain train-classifier; diffusion models do not read it).
  model::Pool pool = model::Pool::attention;
  // Channels-last weights and activations: auto (under bf16 / fp16 autocast, where the
  // convolutions are faster so), true or false.
  ChannelsLast channels_last = ChannelsLast::automatic;
  // GroupNorm32 and the SiLU or scale-shift after it as one node (model/fused_group_norm.hpp):
  // on CUDA, kernels that read the activations in their own layout; on the CPU, the same
  // computation from ATen ops (slower than the default there).
  bool fused_group_norm = false;
};

struct DiffusionConfig {
  diffusion::BetaSchedule schedule = diffusion::BetaSchedule::cosine;  // linear | cosine | sigmoid
  int64_t steps = 4000;
  bool zero_terminal_snr = false;  // rescale the schedule so abar_{T-1} = 0 (Lin et al.)
  // epsilon | start_x | previous_x | v
  diffusion::ModelMeanType model_mean_type = diffusion::ModelMeanType::epsilon;
  // fixed_small | fixed_large | learned | learned_range
  diffusion::ModelVarType model_var_type = diffusion::ModelVarType::learned_range;
  Loss loss = Loss::hybrid;   // hybrid | simple | vlb | vlb_unscaled
  double vlb_weight = 0.001;  // lambda of the hybrid loss
  // w(t) on the mse term: none | min_snr | snr | sigmoid
  diffusion::SimpleWeighting weighting = diffusion::SimpleWeighting::none;
  double min_snr_gamma = 5.0;
  double sigmoid_bias = 0.0;
  // uniform | loss-second-moment | logit_normal | stratified (= uniform, stratified)
  diffusion::TimestepSamplerKind timestep_sampler = diffusion::TimestepSamplerKind::uniform;
  bool stratified_timesteps = false;  // stratify the global batch's draws of any density
  double logit_normal_mean = 0.0;
  double logit_normal_std = 1.0;
  bool rescale_timesteps = true;  // the network sees t * 1000 / T
};

// Post-hoc EMA (train/phema.hpp, docs/phema.md): power-function EMAs of the weights tracked at
// every step and snapshotted now and then, from which `difftrain phema` reconstructs, after
// training, the average of any relative width sigma_rel.
struct PhemaConfig {
  // The tracked profiles' relative widths, each in (0, 0.2887); [] = off.
  std::vector<double> sigma_rels{0.05, 0.10};
  int64_t snapshot_every = 5000;  // steps between snapshots (RUN_DIR/phema/)
};

struct TrainingConfig {
  int64_t batch_size = 128;  // global: every rank takes batch_size / ranks
  int64_t microbatch = 0;    // per-rank microbatch for gradient accumulation; 0 = whole batch
  double lr = 1e-4;
  double weight_decay = 0.0;
  int64_t warmup_steps = 0;
  int64_t lr_anneal_steps = 0;  // linear decay to 0 over this many steps; 0 = constant
  double grad_clip = 0.0;       // max global gradient norm; 0 = off
  // Classifier-free guidance (Ho & Salimans 2022): the share of samples trained with the null
  // label instead of their class, so that one network learns both; needs data.class_conditional.
  double p_uncond = 0.0;
  // With model.low_res_noise: the levels drawn in training, as a fraction f of the diffusion's
  // timesteps: uniform over the timesteps 0 .. round(f (T - 1)).
  double low_res_noise_max = 1.0;
  int64_t max_steps = 0;  // 0 = no limit
  double max_time = 0.0;  // seconds of training; 0 = no limit
  std::vector<double> ema_rates{0.9999};
  bool ema_warmup = false;                // rate_n = min(rate, (1 + n) / (10 + n))
  Precision precision = Precision::fp32;  // fp32 | bf16 | fp16
  Tf32 tf32 = Tf32::library_default;      // default | true | false
  // cuDNN's benchmark mode on a GPU: each convolution shape's algorithm chosen by timing them
  // once (EDM's default), not by heuristics. Off under `deterministic`, whose runs must repeat.
  bool cudnn_benchmark = true;
  double loss_scale_init = 65536.0;
  int64_t loss_scale_growth_interval = 2000;
  double loss_scale_min = 1.0;
  int64_t max_bad_steps = 10;  // consecutive non-finite steps before stopping with an error
  int64_t checkpoint_every = 1000;
  int64_t keep_checkpoints = 3;
  int64_t threads = 0;            // torch intra-op threads per rank; 0 = LibTorch's default
  double watchdog_timeout = 600;  // seconds a collective may take before the job is aborted
  // Every N steps (0 = off) check that every rank holds the same parameters, optimizer, EMA and
  // timestep-sampler state (an exact fingerprint; a debugging aid, it copies the state to host).
  int64_t check_replicas_every = 0;
  double bucket_mb = 25;  // gradient all-reduce bucket size (the first bucket is 1 MB)
  PhemaConfig phema;
};

struct LoggingConfig {
  std::string run_dir = "runs/default";
  int64_t log_every = 50;
  int64_t timestep_stats_every = 500;
  int64_t timestep_buckets = 10;
  // Every bpd_every steps (0 = off): an unbiased stratified estimate of bits/dim on a fixed batch
  // of bpd_batch images from data.validation, with bpd_timesteps network calls per image.
  int64_t bpd_every = 0;
  int64_t bpd_batch = 64;
  int64_t bpd_timesteps = 16;
  // Every sample_every steps (0 = off): rank 0 writes a grid of sample_num images drawn with the
  // first EMA's weights by DPM-Solver++ in sample_steps steps (train/sample_grid.hpp).
  int64_t sample_every = 0;
  int64_t sample_num = 64;
  int64_t sample_steps = 20;
};

struct Config {
  int64_t seed = 0;
  bool deterministic = false;
  // auto | cpu | cuda | cuda:N: a GPU per local rank (auto: when there are GPUs), or GPU N for
  // every rank of a node (parallel/rank_device.hpp)
  parallel::DeviceRequest device;
  DataConfig data;
  ModelConfig model;
  DiffusionConfig diffusion;
  TrainingConfig training;
  LoggingConfig logging;
};

// Reads a YAML file, applies overrides ("section.key=value", value in YAML syntax) and checks
// keys and types. Relative paths are relative to the working directory, as on a command line.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
Config parse_config(const std::string& yaml, const std::vector<std::string>& overrides = {},
                    const std::string& origin = "<string>");
std::string to_yaml(const Config& config);
// A checkpoint's stored config, perhaps written by another version of difftrain: keys this version
// does not know are listed in `unknown_keys` instead of being errors.
Config parse_stored_config(const std::string& yaml, const std::string& origin,
                           std::vector<std::string>& unknown_keys);

// What the weights of a run were trained for: the diffusion keys that define the objective
// (schedule, steps, zero_terminal_snr, model_mean_type, model_var_type, loss, rescale_timesteps).
// One line "key: before -> now" for each that differs; none when `now` continues `before`.
std::vector<std::string> objective_changes(const Config& before, const Config& now);
// What the network sees: data.pad_to, or with the same pad_to the resolved model.image_size (data
// of another size; `now` resolved, resolved_config, or 0 to skip). The UNet
// is convolutional, so its weights carry over to another input size, but held-out bits/dim before
// and after are averaged over different dimensions. One line "key: before -> now" if it differs.
std::vector<std::string> input_changes(const Config& before, const Config& now);

// Value ranges and combinations that need no data: throws ConfigError naming the key.
void validate(const Config& config);
// Checks that need the world size: the global batch divides into ranks and microbatches.
void validate_for_world(const Config& config, int world_size);

}  // namespace difftrain::train
