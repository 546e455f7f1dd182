// The fused GroupNorm's CUDA kernels (declared in group_norm_kernels.hpp). Two passes forward (the
// group statistics, then normalise, affine and SiLU in one write) and two backward (per-channel
// sums, then dx), each reading the activations in their own layout: no float32 copy, no
// channels-first copy, one rounding to the activations' dtype.
#include "model/group_norm_kernels.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cub/block/block_reduce.cuh>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace difftrain::model::kernels {
namespace {

constexpr int kThreads = kGroupThreads;  // every kernel's block size

__device__ float to_float(float v) {
  return v;
}
__device__ float to_float(__half v) {
  return __half2float(v);
}
__device__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ T from_float(float v);
template <>
__device__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __half from_float<__half>(float v) {
  return __float2half(v);
}
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

__device__ float activation(float z, bool silu) {
  return silu ? z / (1.f + expf(-z)) : z;
}

// d/dz of z sigmoid(z) = sigmoid(z) (1 + z (1 - sigmoid(z))).
__device__ float activation_grad(float z, bool silu) {
  if (!silu) return 1.f;
  const float sig = 1.f / (1.f + expf(-z));
  return sig * (1.f + z * (1.f - sig));
}

// Welford's running mean and sum of squared deviations, and Chan et al.'s merge of two.
struct Welford {
  float mean = 0.f, m2 = 0.f, count = 0.f;
};

struct MergeWelford {
  __device__ Welford operator()(const Welford& a, const Welford& b) const {
    const float count = a.count + b.count;
    if (count == 0.f) return {};
    const float delta = b.mean - a.mean;
    const float wb = b.count / count;
    return {a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.count * wb, count};
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    stats_kernel(const T* x, GroupNormShape s, float eps, float* mean, float* rstd) {
  const int64_t ng = blockIdx.x;
  const GroupWalk w = group_walk(s, ng / s.groups, ng % s.groups, static_cast<int>(threadIdx.x));
  Welford acc;
  if (w.channel >= 0)
    for (int64_t p = w.row; p < s.hw; p += w.rows) {
      const float v = to_float(x[w.first + p * w.p_stride]);
      acc.count += 1.f;
      const float d = v - acc.mean;
      acc.mean += d / acc.count;
      acc.m2 += d * (v - acc.mean);
    }
  using Reduce = cub::BlockReduce<Welford, kThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const Welford all = Reduce(temp).Reduce(acc, MergeWelford{});
  if (threadIdx.x == 0) {
    mean[ng] = all.mean;
    rstd[ng] = rsqrtf(all.m2 / all.count + eps);  // the biased variance, as GroupNorm
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

template <typename F>
void with_type(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::float32:
      return f(static_cast<float*>(nullptr));
    case Dtype::float16:
      return f(static_cast<__half*>(nullptr));
    case Dtype::bfloat16:
      return f(static_cast<__nv_bfloat16*>(nullptr));
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

unsigned elementwise_blocks(int64_t total) {
  return static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20));
}

void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("fused GroupNorm: ") + what + ": " +
                             cudaGetErrorString(e));
}

void check_shape(const GroupNormShape& s) {
  if (s.groups <= 0 || s.c % s.groups != 0 || s.c / s.groups > kMaxChannelsPerGroup)
    throw std::invalid_argument("fused GroupNorm: " + std::to_string(s.c) + " channels in " +
                                std::to_string(s.groups) + " groups: need at most " +
                                std::to_string(kMaxChannelsPerGroup) + " channels per group");
}

}  // namespace

void group_norm_forward(Dtype dtype, const void* x, const float* a, const float* b,
                        const GroupNormShape& s, float eps, bool silu, void* y, float* mean,
                        float* rstd, cudaStream_t stream) {
  check_shape(s);
  const int64_t total = s.n * s.c * s.hw;
  if (total == 0) return;
  with_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xt = static_cast<const T*>(x);
    stats_kernel<T>
        <<<static_cast<unsigned>(s.n * s.groups), kThreads, 0, stream>>>(xt, s, eps, mean, rstd);
    check_launch("statistics");
    with_index(total, [&](auto count) {
      apply_kernel<<<elementwise_blocks(total), kThreads, 0, stream>>>(
          xt, a, b, mean, rstd, s, silu, static_cast<T*>(y), count);
    });
    check_launch("normalisation");
  });
}

void group_norm_backward(Dtype dtype, const void* dy, const void* x, const float* a, const float* b,
                         const float* mean, const float* rstd, const GroupNormShape& s, bool silu,
                         void* dx, float* sum_dz, float* sum_dz_xhat, float* sum_a_dz,
                         float* sum_a_dz_xhat, cudaStream_t stream) {
  check_shape(s);
  const int64_t total = s.n * s.c * s.hw;
  if (total == 0) return;
  with_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* dyt = static_cast<const T*>(dy);
    const T* xt = static_cast<const T*>(x);
    backward_sums_kernel<T><<<static_cast<unsigned>(s.n * s.groups), kThreads, 0, stream>>>(
        dyt, xt, a, b, mean, rstd, s, silu, sum_dz, sum_dz_xhat, sum_a_dz, sum_a_dz_xhat);
    check_launch("backward sums");
    with_index(total, [&](auto count) {
      dx_kernel<<<elementwise_blocks(total), kThreads, 0, stream>>>(
          dyt, xt, a, b, mean, rstd, sum_a_dz, sum_a_dz_xhat, s, silu, static_cast<T*>(dx), count);
    });
    check_launch("input gradient");
  });
}

}  // namespace difftrain::model::kernels
