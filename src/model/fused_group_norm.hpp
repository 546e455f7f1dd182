// GroupNorm, a per-sample affine and SiLU as one autograd node (model.fused_group_norm):
//
//   y = f((x - mean_g) * rstd_g * a[n, c] + b[n, c]),   f = SiLU or the identity,
//
// with mean_g and rstd_g = 1 / sqrt(var_g + eps) over each sample's group of channels, computed in
// float32 (float64 stays float64) and rounded once to x's dtype. a = weight and b = bias give
// GroupNorm; a = weight (1 + scale), b = bias (1 + scale) + shift give improved-diffusion's
// scale-shift norm; autograd carries the gradients of a and b back to what they were made of.
//
// On CUDA, for float32 / float16 / bfloat16 activations, it runs the kernels of
// group_norm_kernels.cu, which read x in its own layout (NCHW or channels-last NHWC): ATen's CUDA
// GroupNorm copies channels-last input channels-first, and GroupNorm32's float32 round trip and
// the SiLU after it are passes of their own. Elsewhere (the CPU, a build without nvcc) the same
// computation runs from ATen ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace difftrain::model {

// x [N, C, ...]; a, b broadcastable to [N, C]; C divisible by groups.
at::Tensor fused_group_norm(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
                            int64_t groups, double eps, bool silu);

// Whether this build has the CUDA kernels (LibTorch with CUDA, and nvcc at build time).
bool fused_group_norm_kernels_built();

// Whether fused_group_norm runs the CUDA kernels for x (otherwise ATen ops).
bool fused_group_norm_uses_kernels(const at::Tensor& x, int64_t groups);

}  // namespace difftrain::model
