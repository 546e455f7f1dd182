// improved-diffusion's GroupNorm32 (`normalization(channels)`): GroupNorm with 32 groups, computed
// in at least float32 and cast back, so it is stable under bf16/fp16 autocast.
#pragma once

#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace difftrain::model {

class GroupNorm32Impl : public torch::nn::Module {
 public:
  explicit GroupNorm32Impl(int64_t channels);
  at::Tensor forward(const at::Tensor& x);

  at::Tensor weight;  // [C], ones
  at::Tensor bias;    // [C], zeros
};
TORCH_MODULE(GroupNorm32);

}  // namespace difftrain::model
