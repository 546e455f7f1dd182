// The fused GroupNorm's CUDA kernels and the order they run in, for group_norm_kernels.cu and
// for tests/model, which runs them on CPU threads (test_group_norm_kernels_on_cpu.cpp): device
// code that includes no LibTorch header and needs nothing a host compiler lacks but the CUDA
// built-ins the test stands in for (threadIdx, blockIdx, blockDim, gridDim, __syncthreads).
//
// Two passes forward (the group statistics, then normalise, affine and SiLU in one write) and two
// backward (per-channel sums, then dx), each reading the activations in their own layout: no
// float32 copy, no channels-first copy, one rounding to the activations' dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "model/group_norm_walk.hpp"

namespace difftrain::model::kernels {

constexpr int kThreads = kGroupThreads;  // every kernel's block size

__device__ inline float to_float(float v) {
  return v;
}
__device__ inline float to_float(__half v) {
  return __half2float(v);
}
__device__ inline float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) {
  return v;
}
template <>
__device__ inline __half from_float<__half>(float v) {
  return __float2half(v);
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

__device__ inline float activation(float z, bool silu) {
  return silu ? z / (1.f + expf(-z)) : z;
}

// d/dz of z sigmoid(z) = sigmoid(z) (1 + z (1 - sigmoid(z))).
__device__ inline float activation_grad(float z, bool silu) {
  if (!silu) return 1.f;
  const float sig = 1.f / (1.f + expf(-z));
  return sig * (1.f + z * (1.f - sig));
}

// Welford's running mean and sum of squared deviations, and Chan et al.'s merge of two.
struct Welford {  // an aggregate: shared memory takes no constructors
  float mean, m2, count;
};

__device__ inline Welford merge(const Welford& a, const Welford& b) {
  const float count = a.count + b.count;
  if (count == 0.f) return {0.f, 0.f, 0.f};
  const float delta = b.mean - a.mean;
  const float wb = b.count / count;
  return {a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.count * wb, count};
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    stats_kernel(const T* x, GroupNormShape s, float eps, float* mean, float* rstd) {
  const int64_t ng = blockIdx.x;
  const GroupWalk w = group_walk(s, ng / s.groups, ng % s.groups, static_cast<int>(threadIdx.x));
  Welford acc{0.f, 0.f, 0.f};
  if (w.channel >= 0)
    for (int64_t p = w.row; p < s.hw; p += w.rows) {
      const float v = to_float(x[w.first + p * w.p_stride]);
      acc.count += 1.f;
      const float d = v - acc.mean;
      acc.mean += d / acc.count;
      acc.m2 += d * (v - acc.mean);
    }
  // A tree over the block's threads (not CUB's warp shuffles, so that tests/model can run this
  // kernel on CPU threads).
  __shared__ Welford parts[kThreads];
  parts[threadIdx.x] = acc;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width)
      parts[threadIdx.x] = merge(parts[threadIdx.x], parts[threadIdx.x + width]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    mean[ng] = parts[0].mean;
    rstd[ng] = rsqrtf(parts[0].m2 / parts[0].count + eps);  // the biased variance, as GroupNorm
  }
}

template <typename T, typename Index>
__global__ void apply_kernel(const T* x, const float* a, const float* b, const float* mean,
                             const float* rstd, GroupNormShape s, bool silu, T* y, Index total) {
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    Index nc, ng;
    locate(i, s, nc, ng);
    const float x_hat = (to_float(x[i]) - mean[ng]) * rstd[ng];
    y[i] = from_float<T>(activation(x_hat * a[nc] + b[nc], silu));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    backward_sums_kernel(const T* dy, const T* x, const float* a, const float* b, const float* mean,
                         const float* rstd, GroupNormShape s, bool silu, float* sum_dz,
                         float* sum_dz_xhat, float* sum_a_dz, float* sum_a_dz_xhat) {
  const int64_t ng = blockIdx.x, n = ng / s.groups, g = ng % s.groups;
  const int cg = static_cast<int>(s.c / s.groups);
  const GroupWalk w = group_walk(s, n, g, static_cast<int>(threadIdx.x));
  const float mu = mean[ng], r = rstd[ng];
  float s_dz = 0.f, s_dz_xhat = 0.f;
  if (w.channel >= 0) {
    const int64_t nc = n * s.c + g * cg + w.channel;
    const float ac = a[nc], bc = b[nc];
    for (int64_t p = w.row; p < s.hw; p += w.rows) {
      const int64_t k = w.first + p * w.p_stride;
      const float x_hat = (to_float(x[k]) - mu) * r;
      const float dz = to_float(dy[k]) * activation_grad(x_hat * ac + bc, silu);
      s_dz += dz;
      s_dz_xhat += dz * x_hat;
    }
  }
  __shared__ float part_dz[kThreads], part_dz_xhat[kThreads];
  __shared__ float a_dz[kThreads], a_dz_xhat[kThreads];
  part_dz[threadIdx.x] = s_dz;
  part_dz_xhat[threadIdx.x] = s_dz_xhat;
  __syncthreads();
  // One thread per channel sums its rows.
  if (static_cast<int>(threadIdx.x) < cg) {
    const int ch = static_cast<int>(threadIdx.x);
    float t_dz = 0.f, t_dz_xhat = 0.f;
    for (int row = 0; row < w.rows; ++row) {
      t_dz += part_dz[walker(s, ch, row)];
      t_dz_xhat += part_dz_xhat[walker(s, ch, row)];
    }
    const int64_t nc = n * s.c + g * cg + ch;
    sum_dz[nc] = t_dz;
    sum_dz_xhat[nc] = t_dz_xhat;
    a_dz[ch] = a[nc] * t_dz;
    a_dz_xhat[ch] = a[nc] * t_dz_xhat;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float t_a_dz = 0.f, t_a_dz_xhat = 0.f;
    for (int ch = 0; ch < cg; ++ch) {
      t_a_dz += a_dz[ch];
      t_a_dz_xhat += a_dz_xhat[ch];
    }
    sum_a_dz[ng] = t_a_dz;
    sum_a_dz_xhat[ng] = t_a_dz_xhat;
  }
}

// dx = rstd (dx_hat - mean(dx_hat) - x_hat mean(dx_hat x_hat)), dx_hat = a dz: the backward of
// normalisation, with the group means from the sums above.
template <typename T, typename Index>
__global__ void dx_kernel(const T* dy, const T* x, const float* a, const float* b,
                          const float* mean, const float* rstd, const float* sum_a_dz,
                          const float* sum_a_dz_xhat, GroupNormShape s, bool silu, T* dx,
                          Index total) {
  const float inv_m = 1.f / static_cast<float>((s.c / s.groups) * s.hw);
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<Index>(gridDim.x) * blockDim.x) {
    Index nc, ng;
    locate(i, s, nc, ng);
    const float r = rstd[ng];
    const float x_hat = (to_float(x[i]) - mean[ng]) * r;
    const float dz = to_float(dy[i]) * activation_grad(x_hat * a[nc] + b[nc], silu);
    const float centred = a[nc] * dz - (sum_a_dz[ng] + x_hat * sum_a_dz_xhat[ng]) * inv_m;
    dx[i] = from_float<T>(r * centred);
  }
}

// Elementwise kernels index in 32 bits where the tensor allows it (64-bit division is slow).
template <typename F>
void with_index(int64_t total, F&& f) {
  if (total <= INT32_MAX)
    f(static_cast<int32_t>(total));
  else
    f(total);
}

inline unsigned elementwise_blocks(int64_t total) {
  return static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20));
}

// The launches of one forward and one backward. `launch(grid, block, kernel, args...)` runs a
// kernel: on the current stream in group_norm_kernels.cu, on CPU threads in the test.
template <typename T, typename Launch>
void launch_forward(Launch&& launch, const T* x, const float* a, const float* b,
                    const GroupNormShape& s, float eps, bool silu, T* y, float* mean, float* rstd) {
  const int64_t total = s.n * s.c * s.hw;
  if (total == 0) return;
  launch(static_cast<unsigned>(s.n * s.groups), kThreads, stats_kernel<T>, x, s, eps, mean, rstd);
  with_index(total, [&](auto count) {
    launch(elementwise_blocks(total), kThreads, apply_kernel<T, decltype(count)>, x, a, b, mean,
           rstd, s, silu, y, count);
  });
}

template <typename T, typename Launch>
void launch_backward(Launch&& launch, const T* dy, const T* x, const float* a, const float* b,
                     const float* mean, const float* rstd, const GroupNormShape& s, bool silu,
                     T* dx, float* sum_dz, float* sum_dz_xhat, float* sum_a_dz,
                     float* sum_a_dz_xhat) {
  const int64_t total = s.n * s.c * s.hw;
  if (total == 0) return;
  launch(static_cast<unsigned>(s.n * s.groups), kThreads, backward_sums_kernel<T>, dy, x, a, b,
         mean, rstd, s, silu, sum_dz, sum_dz_xhat, sum_a_dz, sum_a_dz_xhat);
  with_index(total, [&](auto count) {
    launch(elementwise_blocks(total), kThreads, dx_kernel<T, decltype(count)>, dy, x, a, b, mean,
           rstd, sum_a_dz, sum_a_dz_xhat, s, silu, dx, count);
  });
}

}  // namespace difftrain::model::kernels
