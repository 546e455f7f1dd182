// The fused GroupNorm's CUDA kernels (src/model/group_norm_kernels.cuh), the very source that
// nvcc compiles, built by the host compiler and run on CPU threads: one std::thread per CUDA
// thread of a block, a std::barrier for __syncthreads, the blocks one after another, through the
// same launch sequence as on a GPU. Against fused_group_norm's ATen-ops path in float64 (itself
// tested against autograd in test_fused_group_norm.cpp). Built where the kernels are: it needs the
// CUDA headers' half and bfloat16 types. What it cannot show (the GPU check does): the compiler's
// device code, warp scheduling, the memory model of a real GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>  // the CUDA keywords, empty for a host compiler

#include <barrier>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "model/fused_group_norm.hpp"

// The CUDA built-ins the kernels use, for CPU threads. Names with two underscores are the
// kernels' own spelling.
#undef __shared__
#define __shared__ static  // one copy for all threads of the block
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
struct EmulatedDim3 {
  unsigned x = 0, y = 1, z = 1;
};
inline thread_local EmulatedDim3 threadIdx, blockIdx;
inline EmulatedDim3 blockDim, gridDim;
inline std::barrier<>* block_barrier = nullptr;
inline void __syncthreads() {
  block_barrier->arrive_and_wait();
}
inline float rsqrtf(float v) {
  return 1.f / std::sqrt(v);
}

#include "model/group_norm_kernels.cuh"
#undef __shared__
#undef __launch_bounds__

namespace difftrain::model {
namespace {

// Runs a kernel's grid: `block` threads, each taking every block in turn, a barrier between
// blocks (a block's shared memory is the next one's).
struct CpuLaunch {
  template <typename... Params, typename... Args>
  void operator()(unsigned grid, unsigned block, void (*kernel)(Params...), Args... args) const {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    std::barrier<> sync(block);
    block_barrier = &sync;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t)
      threads.emplace_back([&, t] {
        threadIdx = {t, 1, 1};
        for (unsigned b = 0; b < grid; ++b) {
          blockIdx = {b, 1, 1};
          kernel(args...);
          sync.arrive_and_wait();
        }
      });
    for (auto& thread : threads)
      thread.join();
  }
};

constexpr int64_t kGroups = 32;
constexpr float kEps = 1e-5f;

template <typename T>
T* as(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// y, dx, d a, d b of the kernels for x [N, C, H, W] in x's layout and dtype (T), a and b [N, C].
template <typename T>
std::vector<at::Tensor> kernel_outputs(const at::Tensor& x, const at::Tensor& a,
                                       const at::Tensor& b, const at::Tensor& dy, bool silu) {
  const int64_t n = x.size(0), c = x.size(1);
  const kernels::GroupNormShape s{
      n, c, x.size(2) * x.size(3), kGroups,
      x.is_contiguous() ? kernels::Layout::nchw : kernels::Layout::nhwc};
  const auto f = torch::TensorOptions(at::kFloat);
  auto y = at::empty_like(x), dx = at::empty_like(x);
  auto mean = at::empty({n, kGroups}, f), rstd = at::empty({n, kGroups}, f);
  auto sum_dz = at::empty({n, c}, f), sum_dz_xhat = at::empty({n, c}, f);
  auto sum_a_dz = at::empty({n, kGroups}, f), sum_a_dz_xhat = at::empty({n, kGroups}, f);
  kernels::launch_forward(CpuLaunch{}, as<const T>(x), as<const float>(a), as<const float>(b), s,
                          kEps, silu, as<T>(y), as<float>(mean), as<float>(rstd));
  kernels::launch_backward(CpuLaunch{}, as<const T>(dy), as<const T>(x), as<const float>(a),
                           as<const float>(b), as<const float>(mean), as<const float>(rstd), s,
                           silu, as<T>(dx), as<float>(sum_dz), as<float>(sum_dz_xhat),
                           as<float>(sum_a_dz), as<float>(sum_a_dz_xhat));
  return {y, dx, sum_dz_xhat, sum_dz};
}

TEST(GroupNormKernelsOnCpu, MatchTheFusedNormInFloat64) {
  struct Case {
    int64_t n, c, h, w;
    bool channels_last, silu;
  };
  const std::vector<Case> cases{{2, 64, 5, 7, false, true}, {2, 64, 5, 7, true, true},
                                {2, 96, 4, 4, true, false}, {2, 32, 3, 3, false, true},
                                {1, 512, 2, 2, true, true}, {2, 8192, 1, 1, false, true}};
  const std::vector<std::string> what{"y", "dx", "d a", "d b"};
  for (const auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const Case& k : cases) {
      const std::string name = std::string(c10::toString(dtype)) + " " + std::to_string(k.c) + "x" +
                               std::to_string(k.h) + "x" + std::to_string(k.w) +
                               (k.channels_last ? " NHWC" : " NCHW") + (k.silu ? " silu" : "");
      SCOPED_TRACE(name);
      torch::manual_seed(k.c + k.h);
      const auto format =
          k.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
      const auto x = (torch::randn({k.n, k.c, k.h, k.w}) * 3 + 0.5).to(dtype).contiguous(format);
      const auto dy = torch::randn({k.n, k.c, k.h, k.w}).to(dtype).contiguous(format);
      const auto a = 1 + 0.3 * torch::randn({k.n, k.c}), b = 0.2 * torch::randn({k.n, k.c});

      std::vector<at::Tensor> got;
      if (dtype == at::kFloat) got = kernel_outputs<float>(x, a, b, dy, k.silu);
      if (dtype == at::kBFloat16) got = kernel_outputs<__nv_bfloat16>(x, a, b, dy, k.silu);
      if (dtype == at::kHalf) got = kernel_outputs<__half>(x, a, b, dy, k.silu);

      const auto x64 = x.to(at::kDouble).requires_grad_(true);
      const auto a64 = a.to(at::kDouble).requires_grad_(true);
      const auto b64 = b.to(at::kDouble).requires_grad_(true);
      const auto y64 = fused_group_norm(x64, a64, b64, kGroups, kEps, k.silu);
      const auto grads = torch::autograd::grad({y64}, {x64, a64, b64}, {dy.to(at::kDouble)});
      const std::vector<at::Tensor> want{y64.detach(), grads[0], grads[1], grads[2]};

      const bool fp32 = dtype == at::kFloat;
      for (std::size_t i = 0; i < want.size(); ++i) {
        const double scale = want[i].abs().max().item<double>();
        const double err = (got[i].to(at::kDouble) - want[i]).abs().max().item<double>() / scale;
        const double tolerance = fp32 ? (i == 0 ? 1e-5 : 1e-4) : (i <= 1 ? 1e-2 : 1e-3);
        EXPECT_LT(err, tolerance) << what[i];
      }
      EXPECT_EQ(got[0].strides(), x.strides()) << "y in x's layout";
    }
  }
}

}  // namespace
}  // namespace difftrain::model
