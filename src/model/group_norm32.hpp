// improved-diffusion's GroupNorm32 (`normalization(channels)`): GroupNorm with 32 groups, computed
// in at least float32 and cast back, so it is stable under bf16/fp16 autocast. The SiLU and the
// scale-shift that follow it in the UNet are its methods too, so that model.fused_group_norm can
// make the norm and what follows one node (model/fused_group_norm.hpp).
#pragma once

#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace difftrain::model {

class GroupNorm32Impl : public torch::nn::Module {
 public:
  explicit GroupNorm32Impl(int64_t channels);
  at::Tensor forward(const at::Tensor& x);       // GroupNorm(x)
  at::Tensor forward_silu(const at::Tensor& x);  // SiLU(GroupNorm(x))
  // SiLU(GroupNorm(x) (1 + scale) + shift), scale and shift [N, C, 1, 1]: the scale-shift norm.
  at::Tensor forward_scale_shift_silu(const at::Tensor& x, const at::Tensor& scale,
                                      const at::Tensor& shift);

  at::Tensor weight;  // [C], ones
  at::Tensor bias;    // [C], zeros
  // One fused_group_norm node for the norm and what follows it (model.fused_group_norm); off:
  // ATen's group_norm, then SiLU and the scale-shift as ops of their own.
  bool fused = false;
};
TORCH_MODULE(GroupNorm32);

// Sets `fused` on every GroupNorm32 in `net`.
void use_fused_group_norm(torch::nn::Module& net, bool fused);

}  // namespace difftrain::model
