// improved-diffusion's Downsample and Upsample: the resolution changes between UNet levels.
#pragma once

#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

namespace difftrain::model {

// The parameter-free resampling both layers use, and guided-diffusion's up / down ResBlocks too.
at::Tensor upsample_nearest_x2(const at::Tensor& x);  // [N, C, H, W] -> [N, C, 2H, 2W]
at::Tensor avg_pool_x2(const at::Tensor& x);          // [N, C, H, W] -> [N, C, H/2, W/2]

// x [N, C, H, W] -> [N, C, H/2, W/2]: stride-2 conv3x3 `op` when use_conv, else 2x2 average
// pooling (no parameters).
class DownsampleImpl : public torch::nn::Module {
 public:
  DownsampleImpl(int64_t channels, bool use_conv);
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::Conv2d op_{nullptr};
};
TORCH_MODULE(Downsample);

// x [N, C, H, W] -> [N, C, 2H, 2W]: nearest-neighbour x2, then conv3x3 `conv` when use_conv.
class UpsampleImpl : public torch::nn::Module {
 public:
  UpsampleImpl(int64_t channels, bool use_conv);
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Upsample);

}  // namespace difftrain::model
