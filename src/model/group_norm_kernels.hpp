// The CUDA kernels of the fused GroupNorm (model/fused_group_norm.hpp), declared without LibTorch
// so that nvcc compiles only group_norm_kernels.cu, not the LibTorch headers.
//
// Every function reads and writes x, y, dy, dx in one memory layout (NCHW or NHWC, dense), the
// affine a, b and the sums in float32, and enqueues on `stream`. M = Cg * HW elements make a
// group; stats are per (n, g) ([N, G] floats), the affine and the partial sums per (n, c).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "model/group_norm_walk.hpp"

namespace difftrain::model::kernels {

// Dtype tags, so that this header needs no CUDA half / bfloat16 headers.
enum class Dtype { float32, float16, bfloat16 };

// mean, rstd [N, G] of x; then y = f((x - mean) * rstd * a + b), f = SiLU or the identity.
void group_norm_forward(Dtype dtype, const void* x, const float* a, const float* b,
                        const GroupNormShape& s, float eps, bool silu, void* y, float* mean,
                        float* rstd, cudaStream_t stream);

// With z = x_hat * a + b and dz = dy * f'(z): sum_dz and sum_dz_xhat [N, C] (the gradients of b
// and a), sum_a_dz and sum_a_dz_xhat [N, G] (their a-weighted sums over each group's channels),
// then dx = rstd * (a dz - (sum_a_dz + x_hat sum_a_dz_xhat) / M).
void group_norm_backward(Dtype dtype, const void* dy, const void* x, const float* a, const float* b,
                         const float* mean, const float* rstd, const GroupNormShape& s, bool silu,
                         void* dx, float* sum_dz, float* sum_dz_xhat, float* sum_a_dz,
                         float* sum_a_dz_xhat, cudaStream_t stream);

}  // namespace difftrain::model::kernels
