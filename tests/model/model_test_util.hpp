// Shared helpers of the model tests.
#pragma once

#include <string>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "model/unet.hpp"

namespace difftrain::model::test {

// A UNet small enough for fast tests: 16x16, two levels, attention at 8x8.
inline UNetConfig tiny_config() {
  return UNetConfig{.image_size = 16,
                    .in_channels = 3,
                    .model_channels = 32,
                    .out_channels = 6,
                    .num_res_blocks = 1,
                    .attention_resolutions = {8},
                    .dropout = 0.0,
                    .channel_mult = {1, 2},
                    .num_heads = 2};
}

// The published CIFAR-10 "hybrid" UNet of Improved DDPM.
inline UNetConfig cifar10_config() {
  return UNetConfig{.image_size = 32,
                    .in_channels = 3,
                    .model_channels = 128,
                    .out_channels = 6,
                    .num_res_blocks = 3,
                    .attention_resolutions = {16, 8},
                    .dropout = 0.3,
                    .channel_mult = {1, 2, 2, 2},
                    .num_heads = 4};
}

// The zero-initialised layers: ResBlock out convs, attention projections, the output conv.
inline bool is_zero_init(const std::string& name) {
  return name.find("out_layers.3.") != std::string::npos ||
         name.find("proj_out.") != std::string::npos || name.rfind("out.2.", 0) == 0;
}

// Gives the zero-initialised layers random weights, so every path carries signal.
inline void perturb_zero_init(torch::nn::Module& model, double scale = 0.05) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.named_parameters())
    if (is_zero_init(p.key())) p.value().normal_(0.0, scale);
}

// CPU autocast for a scope, as `with torch.autocast("cpu", dtype)`.
class CpuAutocast {
 public:
  explicit CpuAutocast(at::ScalarType dtype)
      : enabled_(at::autocast::is_autocast_enabled(at::kCPU)),
        dtype_(at::autocast::get_autocast_dtype(at::kCPU)) {
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, dtype);
    at::autocast::increment_nesting();
  }
  ~CpuAutocast() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(at::kCPU, enabled_);
    at::autocast::set_autocast_dtype(at::kCPU, dtype_);
  }
  CpuAutocast(const CpuAutocast&) = delete;
  CpuAutocast& operator=(const CpuAutocast&) = delete;

 private:
  bool enabled_;
  at::ScalarType dtype_;
};

}  // namespace difftrain::model::test
