#include "model/group_norm32.hpp"

#include "model/unet_config.hpp"

namespace difftrain::model {

GroupNorm32Impl::GroupNorm32Impl(int64_t channels)
    : weight(register_parameter("weight", torch::ones({channels}))),
      bias(register_parameter("bias", torch::zeros({channels}))) {}

at::Tensor GroupNorm32Impl::forward(const at::Tensor& x) {
  // float64 stays float64; bf16/fp16 activations are normalised in float32.
  const auto dtype = at::promote_types(x.scalar_type(), at::kFloat);
  return at::group_norm(x.to(dtype), kGroupNormGroups, weight.to(dtype), bias.to(dtype), 1e-5)
      .to(x.scalar_type());
}

}  // namespace difftrain::model
