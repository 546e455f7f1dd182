// The experiment configuration: one YAML file with sections data, model, diffusion, training and
// logging, plus `--set section.key=value` overrides. Every key has a default here; unknown keys,
// wrong types and out-of-range values are ConfigErrors that name the key.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace difftrain::train {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct DataConfig {
  std::string train;                // manifest.json of the training shards
  std::string validation;           // manifest.json of held-out shards ("" = none)
  std::string last_batch = "drop";  // drop | wrap
  bool random_flip = false;
  int64_t pad_to = 0;  // pad images to this size (e.g. 28 -> 32) when they do not halve cleanly
  bool class_conditional = false;
  int64_t prefetch = 4;
};

struct ModelConfig {
  int64_t image_size = 0;   // 0 = from the data (after data.pad_to); else must match it
  int64_t in_channels = 0;  // 0 = from the data manifest; else must match it
  int64_t model_channels = 128;
  std::vector<int64_t> channel_mult{1, 2, 2, 2};
  int64_t num_res_blocks = 3;
  std::vector<int64_t> attention_resolutions{16, 8};
  int64_t num_heads = 4;
  int64_t num_head_channels = -1;
  double dropout = 0.0;
  bool use_scale_shift_norm = true;
  bool conv_resample = true;
  bool channels_last = false;
};

struct DiffusionConfig {
  std::string schedule = "cosine";  // linear | cosine
  int64_t steps = 4000;
  std::string model_mean_type = "epsilon";
  std::string model_var_type = "learned_range";
  std::string loss = "hybrid";               // hybrid | simple | vlb | vlb_unscaled
  double vlb_weight = 0.001;                 // lambda of the hybrid loss
  std::string timestep_sampler = "uniform";  // uniform | loss-second-moment
  bool rescale_timesteps = true;             // the network sees t * 1000 / T
};

struct TrainingConfig {
  int64_t batch_size = 128;  // global: every rank takes batch_size / ranks
  int64_t microbatch = 0;    // per-rank microbatch for gradient accumulation; 0 = whole batch
  double lr = 1e-4;
  double weight_decay = 0.0;
  int64_t warmup_steps = 0;
  int64_t lr_anneal_steps = 0;  // linear decay to 0 over this many steps; 0 = constant
  double grad_clip = 0.0;       // max global gradient norm; 0 = off
  int64_t max_steps = 0;        // 0 = no limit
  double max_time = 0.0;        // seconds of training; 0 = no limit
  std::vector<double> ema_rates{0.9999};
  bool ema_warmup = false;         // rate_n = min(rate, (1 + n) / (10 + n))
  std::string precision = "fp32";  // fp32 | bf16 | fp16
  double loss_scale_init = 65536.0;
  int64_t loss_scale_growth_interval = 2000;
  double loss_scale_min = 1.0;
  int64_t max_bad_steps = 10;  // consecutive non-finite steps before stopping with an error
  int64_t checkpoint_every = 1000;
  int64_t keep_checkpoints = 3;
  int64_t threads = 0;            // torch intra-op threads per rank; 0 = LibTorch's default
  double watchdog_timeout = 600;  // seconds a collective may take before the job is aborted
};

struct LoggingConfig {
  std::string run_dir = "runs/default";
  int64_t log_every = 50;
  int64_t timestep_stats_every = 500;
  int64_t timestep_buckets = 10;
};

struct Config {
  int64_t seed = 0;
  bool deterministic = false;
  std::string device = "auto";  // auto | cpu | cuda
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

// Value ranges and combinations that need no data: throws ConfigError naming the key.
void validate(const Config& config);
// Checks that need the world size: the global batch divides into ranks and microbatches.
void validate_for_world(const Config& config, int world_size);

}  // namespace difftrain::train
