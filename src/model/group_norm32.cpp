#include "model/group_norm32.hpp"

#include "model/fused_group_norm.hpp"
#include "model/unet_config.hpp"

namespace difftrain::model {
namespace {

constexpr double kEps = 1e-5;

}  // namespace

GroupNorm32Impl::GroupNorm32Impl(int64_t channels)
    : weight(register_parameter("weight", torch::ones({channels}))),
      bias(register_parameter("bias", torch::zeros({channels}))) {}

at::Tensor GroupNorm32Impl::forward(const at::Tensor& x) {
  if (fused) return fused_group_norm(x, weight, bias, kGroupNormGroups, kEps, /*silu=*/false);
  // float64 stays float64; bf16/fp16 activations are normalised in float32.
  const auto dtype = at::promote_types(x.scalar_type(), at::kFloat);
  return at::group_norm(x.to(dtype), kGroupNormGroups, weight.to(dtype), bias.to(dtype), kEps)
      .to(x.scalar_type());
}

at::Tensor GroupNorm32Impl::forward_silu(const at::Tensor& x) {
  if (fused) return fused_group_norm(x, weight, bias, kGroupNormGroups, kEps, /*silu=*/true);
  return at::silu(forward(x));
}

at::Tensor GroupNorm32Impl::forward_scale_shift_silu(const at::Tensor& x, const at::Tensor& scale,
                                                     const at::Tensor& shift) {
  if (!fused) return at::silu(forward(x) * (1 + scale) + shift);
  // (x_hat weight + bias) (1 + scale) + shift = x_hat a + b, per sample and channel.
  const auto one_plus_scale = 1 + scale.flatten(1).to(weight.scalar_type());
  return fused_group_norm(x, weight * one_plus_scale, bias * one_plus_scale + shift.flatten(1),
                          kGroupNormGroups, kEps, /*silu=*/true);
}

void use_fused_group_norm(torch::nn::Module& net, bool fused) {
  for (const auto& m : net.modules())
    if (auto* norm = dynamic_cast<GroupNorm32Impl*>(m.get())) norm->fused = fused;
}

}  // namespace difftrain::model
