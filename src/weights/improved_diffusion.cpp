#include "weights/improved_diffusion.hpp"

#include <fmt/format.h>

#include <cmath>

#include "common/shell_word.hpp"

namespace difftrain::weights {
namespace {

// script_util.create_model: the channel multipliers it fixes per image size, its only sizes.
std::vector<double> default_channel_mult(int64_t image_size) {
  if (image_size == 256) return {1, 1, 2, 2, 4, 4};
  if (image_size == 64) return {1, 2, 3, 4};
  if (image_size == 32) return {1, 2, 2, 2};
  return {};
}

constexpr int64_t kImprovedDiffusionClasses = 1000;  // script_util.NUM_CLASSES

std::string list_string(const std::vector<double>& v) {
  return fmt::format("{}", fmt::join(v, ","));
}

}  // namespace

bool ImprovedDiffusionFlags::can_sample() const {
  for (const auto& u : unexpressible)
    if (u.affects_sampling) return false;
  return true;
}

ImprovedDiffusionFlags improved_diffusion_flags(const train::Config& config,
                                                const model::UNetConfig& unet) {
  using diffusion::BetaSchedule, diffusion::ModelMeanType, diffusion::ModelVarType;
  using train::Loss;
  const auto& d = config.diffusion;
  ImprovedDiffusionFlags r;
  const auto flag = [&r](std::string key, std::string value, std::string reason, bool sampling) {
    r.unexpressible.push_back({std::move(key), std::move(value), std::move(reason), sampling});
  };

  // The UNet: create_model fixes in_channels = 3, channel_mult by image size, 1000 classes,
  // convolutional resampling, and heads by count.
  if (unet.in_channels != 3)
    flag("model.in_channels", std::to_string(unet.in_channels),
         "create_model builds 3 input channels", true);
  // An upsampler is sr_create_model's SuperResModel, which builds only 64 and 256 pixels.
  const bool upsampler = unet.low_res_size > 0;
  const auto mult = upsampler && unet.image_size == 32 ? std::vector<double>{}
                                                       : default_channel_mult(unet.image_size);
  if (mult.empty())
    flag("model.image_size", std::to_string(unet.image_size),
         upsampler ? "sr_create_model builds only 64 and 256 pixel upsamplers"
                   : "create_model builds only 32, 64 and 256 pixel models",
         true);
  else if (mult != unet.channel_mult)
    flag("model.channel_mult", list_string(unet.channel_mult),
         fmt::format("create_model fixes channel_mult {} at {} px", list_string(mult),
                     unet.image_size),
         true);
  if (unet.low_res_noise)
    flag("model.low_res_noise", "true",
         "SuperResModel takes no noise level of its low-resolution input (low_res_noise_embed)",
         true);
  if (unet.num_classes > 0 && unet.num_classes != kImprovedDiffusionClasses)
    flag("model.num_classes", std::to_string(unet.num_classes),
         "class_cond builds 1000 classes (ImageNet)", true);
  if (unet.null_class)
    flag("training.p_uncond", fmt::format("{}", config.training.p_uncond),
         "label_emb has no row for classifier-free guidance's null label", true);
  if (unet.num_head_channels != -1)
    flag("model.num_head_channels", std::to_string(unet.num_head_channels),
         "heads are set by count (num_heads), not by channels", true);
  if (!unet.conv_resample)
    flag("model.conv_resample", "false", "resampling is always convolutional", true);
  if (unet.resblock_updown)
    flag("model.resblock_updown", "true",
         "guided-diffusion's up / down ResBlocks are not in improved-diffusion", true);
  if (unet.use_new_attention_order)
    flag("model.use_new_attention_order", "true",
         "improved-diffusion splits the heads before q, k, v (guided-diffusion's legacy order)",
         true);
  if (unet.attention_resolutions.empty())
    flag("model.attention_resolutions", "[]", "attention_resolutions cannot be empty", true);

  // The diffusion: linear / cosine schedules, epsilon or x_0 prediction, learned_range /
  // fixed variances.
  if (d.schedule != BetaSchedule::linear && d.schedule != BetaSchedule::cosine)
    flag("diffusion.schedule", diffusion::to_string(d.schedule),
         "noise_schedule is linear or cosine", true);
  if (d.zero_terminal_snr)
    flag("diffusion.zero_terminal_snr", "true", "the schedule is used as defined", true);
  if (d.model_mean_type != ModelMeanType::epsilon && d.model_mean_type != ModelMeanType::start_x)
    flag("diffusion.model_mean_type", diffusion::to_string(d.model_mean_type),
         "the model predicts epsilon, or x_0 with predict_xstart", true);
  if (d.model_var_type == ModelVarType::learned)
    flag("diffusion.model_var_type", "learned",
         "learn_sigma means learned_range (an interpolation, not the log-variance itself)", true);

  // Training only: the weights sample the same.
  // L_vlb's factor: T / 1000 is RESCALED_MSE (rescale_learned_sigmas), 1 is MSE; "simple" is MSE.
  const double vb_scale = d.vlb_weight * static_cast<double>(d.steps);
  const bool hybrid_rescaled = std::abs(vb_scale - d.steps / 1000.0) < 1e-9;
  const bool unit_vb = std::abs(vb_scale - 1.0) < 1e-9;
  const bool rescale_learned_sigmas =
      d.loss == Loss::hybrid ? hybrid_rescaled || !unit_vb : d.loss != Loss::simple;
  if (d.loss == Loss::hybrid && !hybrid_rescaled && !unit_vb)
    flag("diffusion.vlb_weight", fmt::format("{}", d.vlb_weight),
         "the hybrid loss weighs L_vlb by 0.001 (rescale_learned_sigmas) or by 1/T", false);
  if (d.loss == Loss::vlb_unscaled)
    flag("diffusion.loss", train::to_string(d.loss), "use_kl rescales the bound by T / 1000",
         false);
  if (d.weighting != diffusion::SimpleWeighting::none)
    flag("diffusion.weighting", diffusion::to_string(d.weighting), "the mse term is not weighted",
         false);
  if (d.timestep_sampler == diffusion::TimestepSamplerKind::logit_normal)
    flag("diffusion.timestep_sampler", diffusion::to_string(d.timestep_sampler),
         "image_train.py samples timesteps uniformly or by loss-second-moment", false);

  const bool learned = diffusion::is_learned(d.model_var_type);
  std::vector<std::string> attention;
  for (int64_t res : unet.attention_resolutions)
    attention.push_back(std::to_string(res));
  r.flags = {{"image_size", unet.image_size},
             {"num_channels", unet.model_channels},
             {"num_res_blocks", unet.num_res_blocks},
             {"num_heads", unet.num_heads},
             {"num_heads_upsample", -1},
             {"attention_resolutions", fmt::format("{}", fmt::join(attention, ","))},
             {"dropout", unet.dropout},
             {"learn_sigma", learned},
             {"sigma_small", d.model_var_type == ModelVarType::fixed_small},
             {"class_cond", unet.num_classes > 0},
             {"diffusion_steps", d.steps},
             {"noise_schedule", diffusion::to_string(d.schedule)},
             {"timestep_respacing", ""},
             {"use_kl", d.loss == Loss::vlb || d.loss == Loss::vlb_unscaled},
             {"predict_xstart", d.model_mean_type == ModelMeanType::start_x},
             {"rescale_timesteps", d.rescale_timesteps},
             {"rescale_learned_sigmas", rescale_learned_sigmas},
             {"use_checkpoint", unet.use_checkpoint},
             {"use_scale_shift_norm", unet.use_scale_shift_norm}};
  if (upsampler) {  // sr_model_and_diffusion_defaults: large_size and small_size for image_size
    nlohmann::ordered_json sr{{"large_size", unet.image_size}, {"small_size", unet.low_res_size}};
    for (const auto& [name, value] : r.flags.items())
      if (name != "image_size") sr[name] = value;
    r.flags = std::move(sr);
  }
  return r;
}

std::string image_sample_command(const ImprovedDiffusionFlags& f, const std::string& weights_path) {
  const bool upsampler = f.flags.contains("large_size");
  std::string cmd = upsampler
                        ? "python scripts/super_res_sample.py --base_samples BASE.npz "
                          "--model_path " +
                              shell_word(weights_path)
                        : "python scripts/image_sample.py --model_path " + shell_word(weights_path);
  for (const auto& [name, value] : f.flags.items()) {
    // A sampling choice, and a training one that sampling ignores.
    if (name == "timestep_respacing" || name == "use_checkpoint") continue;
    std::string v;
    if (value.is_boolean())
      v = value.get<bool>() ? "True" : "False";
    else if (value.is_string())
      v = value.get<std::string>();
    else
      v = value.dump();
    cmd += " --" + name + " " + shell_word(v);
  }
  return cmd;
}

}  // namespace difftrain::weights
