#include "train/setup.hpp"

#include <ATen/Context.h>
#include <ATen/Parallel.h>

#include <spdlog/spdlog.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>

#include "data/loader.hpp"
#include "data/manifest.hpp"
#include "model/fused_group_norm.hpp"
#include "model/group_norm32.hpp"
#include "model/memory_format.hpp"

namespace difftrain::train {

DataShape data_shape(const Config& c, const data::Manifest* manifest) {
  DataShape s;
  if (!manifest) {
    if (c.model.image_size == 0 || c.model.in_channels == 0)
      throw ConfigError(
          "set model.image_size and model.in_channels, or point data.train at a "
          "manifest.json, to size the model");
    s.image_size = c.model.image_size;
    s.channels = c.model.in_channels;
    if (c.data.class_conditional) {
      if (c.model.num_classes < 1)
        throw ConfigError(
            "set model.num_classes, or point data.train at a manifest.json with labels, to size "
            "the class-conditional model");
      s.num_classes = c.model.num_classes;
    }
    return s;
  }
  const auto& m = *manifest;
  if (m.height != m.width && c.data.pad_to == 0)
    throw ConfigError(m.path + ": images are " + std::to_string(m.height) + "x" +
                      std::to_string(m.width) +
                      "; the UNet needs square images: set data.pad_to to pad them");
  const int64_t largest = std::max(m.height, m.width);
  if (c.data.pad_to > 0 && c.data.pad_to < largest)
    throw ConfigError("config key 'data.pad_to' = " + std::to_string(c.data.pad_to) +
                      " is smaller than the images (" + std::to_string(largest) + " px) of " +
                      m.path);
  s.image_size = c.data.pad_to > 0 ? c.data.pad_to : largest;
  s.channels = m.channels;
  if (c.model.image_size != 0 && c.model.image_size != s.image_size)
    throw ConfigError("config key 'model.image_size' = " + std::to_string(c.model.image_size) +
                      " but the data (" + m.path + ", after data.pad_to) is " +
                      std::to_string(s.image_size) + " px");
  if (c.model.in_channels != 0 && c.model.in_channels != s.channels)
    throw ConfigError("config key 'model.in_channels' = " + std::to_string(c.model.in_channels) +
                      " but the data (" + m.path + ") has " + std::to_string(s.channels) +
                      " channels");
  if (c.data.class_conditional) {
    if (!m.labels || m.num_classes < 1)
      throw ConfigError("config key 'data.class_conditional' is true but " + m.path +
                        " has no labels");
    s.num_classes = m.num_classes;
    if (c.model.num_classes != 0 && c.model.num_classes != s.num_classes)
      throw ConfigError("config key 'model.num_classes' = " + std::to_string(c.model.num_classes) +
                        " but the data (" + m.path + ") has " + std::to_string(s.num_classes) +
                        " classes");
  }
  return s;
}

void check_paths(const Config& c) {
  const std::pair<const char*, std::string> paths[] = {{"data.train", c.data.train},
                                                       {"data.validation", c.data.validation}};
  for (const auto& [key, path] : paths) {
    std::error_code ec;
    if (!path.empty() && !std::filesystem::exists(path, ec))
      throw ConfigError("config key '" + std::string(key) + "' = '" + path +
                        "': no such file or directory");
  }
  std::error_code ec;
  if (std::filesystem::exists(c.logging.run_dir, ec) &&
      !std::filesystem::is_directory(c.logging.run_dir, ec))
    throw ConfigError("config key 'logging.run_dir' = '" + c.logging.run_dir +
                      "': a file, not a directory");
}

model::UNetConfig unet_config(const Config& c, const DataShape& shape) {
  model::UNetConfig u;
  u.image_size = shape.image_size;
  u.in_channels = shape.channels;
  u.model_channels = c.model.model_channels;
  u.out_channels =
      diffusion::is_learned(c.diffusion.model_var_type) ? 2 * shape.channels : shape.channels;
  u.num_res_blocks = c.model.num_res_blocks;
  u.attention_resolutions = c.model.attention_resolutions;
  u.dropout = c.model.dropout;
  u.channel_mult = c.model.channel_mult;
  u.conv_resample = c.model.conv_resample;
  u.num_classes = shape.num_classes;
  u.null_class = shape.num_classes > 0 && c.training.p_uncond > 0;
  u.num_heads = c.model.num_heads;
  u.num_head_channels = c.model.num_head_channels;
  u.use_scale_shift_norm = c.model.use_scale_shift_norm;
  u.resblock_updown = c.model.resblock_updown;
  u.use_new_attention_order = c.model.use_new_attention_order;
  u.low_res_size = c.model.low_res_size;
  u.low_res_noise = c.model.low_res_noise;
  u.use_checkpoint = c.model.use_checkpoint;
  if (u.low_res_size >= u.image_size)
    throw ConfigError("config key 'model.low_res_size' = " + std::to_string(u.low_res_size) +
                      ": an upsampler's input must be smaller than its " +
                      std::to_string(u.image_size) + "-pixel images");
  try {
    model::validate(u);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(std::string("model config: ") + e.what());
  }
  return u;
}

diffusion::GaussianDiffusion make_diffusion(const Config& c) {
  const auto& d = c.diffusion;
  at::Tensor betas = diffusion::get_named_beta_schedule(d.schedule, d.steps);
  if (d.zero_terminal_snr) betas = diffusion::rescale_zero_terminal_snr(betas);
  return diffusion::make_gaussian_diffusion(betas, d.model_mean_type, d.model_var_type);
}

diffusion::LossSpec make_loss_spec(const Config& c) {
  const auto& d = c.diffusion;
  const long T = d.steps;
  diffusion::LossSpec spec;
  switch (d.loss) {
    case Loss::hybrid:
      spec = diffusion::hybrid_loss_spec(d.vlb_weight, T);
      break;
    case Loss::simple:
      spec = diffusion::loss_spec(diffusion::LossType::mse, d.model_var_type, T);
      break;
    case Loss::vlb:
      spec = diffusion::loss_spec(diffusion::LossType::rescaled_kl, d.model_var_type, T);
      break;
    case Loss::vlb_unscaled:
      spec = diffusion::loss_spec(diffusion::LossType::kl, d.model_var_type, T);
      break;
  }
  spec.weighting = d.weighting;
  spec.min_snr_gamma = d.min_snr_gamma;
  spec.sigmoid_bias = d.sigmoid_bias;
  return spec;
}

diffusion::TimestepSampler make_timestep_sampler(const Config& c, long num_timesteps,
                                                 const c10::Device& device) {
  diffusion::TimestepSamplerOptions o;
  o.kind = c.diffusion.timestep_sampler;
  o.stratified = c.diffusion.stratified_timesteps;
  o.logit_normal_mean = c.diffusion.logit_normal_mean;
  o.logit_normal_std = c.diffusion.logit_normal_std;
  return diffusion::make_timestep_sampler(o, num_timesteps, device);
}

data::LoaderOptions loader_options(const Config& c, const DataShape& shape, int rank, int world,
                                   const c10::Device& device) {
  data::LoaderOptions lo;
  lo.manifest = c.data.train;
  lo.global_batch = c.training.batch_size;
  lo.rank = rank;
  lo.world = world;
  lo.seed = static_cast<uint64_t>(c.seed);
  lo.last_batch = c.data.last_batch;
  lo.random_flip = c.data.random_flip;
  lo.labels = shape.num_classes > 0;
  lo.prefetch = static_cast<int>(c.data.prefetch);
  if (c.data.pad_to > 0) lo.pad_to = c.data.pad_to;
  lo.device = device;
  return lo;
}

Config resolved_config(const Config& config, const DataShape& shape) {
  Config resolved = config;
  resolved.model.image_size = shape.image_size;
  resolved.model.in_channels = shape.channels;
  resolved.model.num_classes = shape.num_classes;
  return resolved;
}

bool use_channels_last(const Config& config, Precision precision) {
  const ChannelsLast v = config.model.channels_last;
  return v == ChannelsLast::on || (v == ChannelsLast::automatic && precision != Precision::fp32);
}

void apply_model_settings(torch::nn::Module& net, const Config& config, Precision precision) {
  if (use_channels_last(config, precision))
    model::to_memory_format(net, at::MemoryFormat::ChannelsLast);
  model::use_fused_group_norm(net, config.model.fused_group_norm);
  const auto params = net.parameters();
  if (config.model.fused_group_norm && !params.empty() && params[0].is_cuda() &&
      !model::fused_group_norm_kernels_built())
    spdlog::warn(
        "model.fused_group_norm: this build has no CUDA kernels (nvcc was not found when it was "
        "built); the fused norm runs from ATen ops, slower than model.fused_group_norm: false");
}

void apply_process_settings(const Config& config) {
  const TrainingConfig& tc = config.training;
  if (tc.threads > 0) at::set_num_threads(static_cast<int>(tc.threads));
  if (config.deterministic) at::globalContext().setDeterministicAlgorithms(true, false);
  if (tc.tf32 != Tf32::library_default) {
    // Both at once, as EDM's --tf32: TF32 for convolutions only (LibTorch's default) would leave
    // attention's matmuls at full fp32 cost, and exact fp32 needs both off.
    at::globalContext().setAllowTF32CuDNN(tc.tf32 == Tf32::on);
    at::globalContext().setAllowTF32CuBLAS(tc.tf32 == Tf32::on);
  }
  // The algorithm timed fastest can differ from run to run, and with it the rounding.
  at::globalContext().setBenchmarkCuDNN(tc.cudnn_benchmark && !config.deterministic);
}

std::string tf32_in_use() {
  const bool convolutions = at::globalContext().allowTF32CuDNN(),
             matmuls = at::globalContext().allowTF32CuBLAS();
  if (convolutions && matmuls) return "TF32 convolutions and matmuls";
  if (convolutions) return "TF32 convolutions, fp32 matmuls";
  if (matmuls) return "fp32 convolutions, TF32 matmuls";
  return "no TF32";
}

std::string cuda_settings_in_use() {
  return tf32_in_use() +
         (at::globalContext().benchmarkCuDNN() ? ", cuDNN benchmark mode" : ", cuDNN heuristics");
}

}  // namespace difftrain::train
