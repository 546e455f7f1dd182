// What a config builds: the data shape the model sees, the UNet, the diffusion and its loss.
// Shared by train, sample, eval and model-info, so that they agree on every derived setting.
#pragma once

#include <cstdint>
#include <optional>

#include <torch/nn/module.h>

#include "diffusion/schedule.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "model/unet_config.hpp"
#include "train/config.hpp"

namespace difftrain::data {
struct Manifest;
struct LoaderOptions;
}  // namespace difftrain::data

namespace difftrain::train {

struct DataShape {
  int64_t image_size = 0;  // the (square) size the model sees, after data.pad_to
  int64_t channels = 0;
  int64_t num_classes = 0;  // 0 = unconditional
};

// From the manifest, checked against model.image_size / model.in_channels when those are set.
// Without a manifest (model-info of a config whose data is elsewhere) model.image_size and
// model.in_channels must be set. Throws ConfigError naming the key.
DataShape data_shape(const Config& config, const data::Manifest* manifest);

// Every path the config names exists (data.train, data.validation even when unused): a typo is
// an error at start, naming the key, not at the first held-out estimate hours later.
void check_paths(const Config& config);

model::UNetConfig unet_config(const Config& config, const DataShape& shape);
// The schedule (rescaled to a zero terminal SNR with diffusion.zero_terminal_snr) and the
// target, of a validated config.
diffusion::GaussianDiffusion make_diffusion(const Config& config);
// Which terms, the factor on L_t and the weighting of the mse term.
diffusion::LossSpec make_loss_spec(const Config& config);
// diffusion.timestep_sampler with its options (stratification, logit-normal mean and std).
diffusion::TimestepSampler make_timestep_sampler(const Config& config, long num_timesteps,
                                                 const c10::Device& device);

// The training loader of this rank: data.train split over `world` ranks, with the config's
// flips, padding and last-batch rule, staged for `device`.
data::LoaderOptions loader_options(const Config& config, const DataShape& shape, int rank,
                                   int world, const c10::Device& device);

// The config as the run resolved it: with the shape the data gave the model, so that its
// checkpoints load where the data is not (sample and eval on another machine).
Config resolved_config(const Config& config, const DataShape& shape);

// The process-wide switches a config sets before training: training.threads (LibTorch's intra-op
// threads), deterministic (deterministic algorithms), training.tf32 (cuDNN's and cuBLAS's TF32
// flags; left alone for default), training.cudnn_benchmark (cuDNN's benchmark mode).
void apply_process_settings(const Config& config);
// What fp32 on a GPU means in this process now: "TF32 convolutions and matmuls", "TF32
// convolutions, fp32 matmuls" (LibTorch's default) or "no TF32".
std::string tf32_in_use();
// The run's first log line on a GPU: tf32_in_use() and whether cuDNN's benchmark mode is on.
std::string cuda_settings_in_use();

// model.channels_last resolved: auto means channels-last when the network runs under autocast
// (`precision` bf16 or fp16).
bool use_channels_last(const Config& config, Precision precision);

// A built network's run-time form: its weights channels-last as use_channels_last says, its
// GroupNorms fused as model.fused_group_norm says (with a warning where that cannot use the CUDA
// kernels on a GPU). Changes no value.
void apply_model_settings(torch::nn::Module& net, const Config& config, Precision precision);

}  // namespace difftrain::train
