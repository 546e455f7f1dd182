#include "train/setup.hpp"

#include <string>

#include "data/manifest.hpp"

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
  }
  return s;
}

model::UNetConfig unet_config(const Config& c, const DataShape& shape) {
  const auto var_type = diffusion::parse_model_var_type(c.diffusion.model_var_type);
  model::UNetConfig u;
  u.image_size = shape.image_size;
  u.in_channels = shape.channels;
  u.model_channels = c.model.model_channels;
  u.out_channels = diffusion::is_learned(var_type) ? 2 * shape.channels : shape.channels;
  u.num_res_blocks = c.model.num_res_blocks;
  u.attention_resolutions = c.model.attention_resolutions;
  u.dropout = c.model.dropout;
  u.channel_mult = c.model.channel_mult;
  u.conv_resample = c.model.conv_resample;
  u.num_classes = shape.num_classes;
  u.num_heads = c.model.num_heads;
  u.num_head_channels = c.model.num_head_channels;
  u.use_scale_shift_norm = c.model.use_scale_shift_norm;
  try {
    model::validate(u);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(std::string("model config: ") + e.what());
  }
  return u;
}

diffusion::GaussianDiffusion make_diffusion(const Config& c) {
  return diffusion::make_gaussian_diffusion(
      diffusion::parse_beta_schedule(c.diffusion.schedule), c.diffusion.steps,
      diffusion::parse_model_mean_type(c.diffusion.model_mean_type),
      diffusion::parse_model_var_type(c.diffusion.model_var_type));
}

diffusion::LossSpec make_loss_spec(const Config& c) {
  const auto var_type = diffusion::parse_model_var_type(c.diffusion.model_var_type);
  const long T = c.diffusion.steps;
  const std::string& loss = c.diffusion.loss;
  if (loss == "hybrid") return diffusion::hybrid_loss_spec(c.diffusion.vlb_weight, T);
  if (loss == "simple") return diffusion::loss_spec(diffusion::LossType::mse, var_type, T);
  if (loss == "vlb") return diffusion::loss_spec(diffusion::LossType::rescaled_kl, var_type, T);
  return diffusion::loss_spec(diffusion::LossType::kl, var_type, T);  // vlb_unscaled
}

double timestep_scale(const Config& c) {
  return c.diffusion.rescale_timesteps ? 1000.0 / static_cast<double>(c.diffusion.steps) : 1.0;
}

}  // namespace difftrain::train
