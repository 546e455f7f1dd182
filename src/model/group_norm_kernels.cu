// The fused GroupNorm's kernels (group_norm_kernels.cuh) launched on a CUDA stream: the entry
// points declared in group_norm_kernels.hpp.
#include "model/group_norm_kernels.hpp"

#include <stdexcept>
#include <string>
#include <type_traits>

#include "model/group_norm_kernels.cuh"

namespace difftrain::model::kernels {
namespace {

struct StreamLaunch {
  cudaStream_t stream;
  template <typename... Params, typename... Args>
  void operator()(unsigned grid, unsigned block, void (*kernel)(Params...), Args... args) const {
    kernel<<<grid, block, 0, stream>>>(args...);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
      throw std::runtime_error(std::string("fused GroupNorm: a kernel launch failed: ") +
                               cudaGetErrorString(e));
  }
};

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
  with_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_forward(StreamLaunch{stream}, static_cast<const T*>(x), a, b, s, eps, silu,
                   static_cast<T*>(y), mean, rstd);
  });
}

void group_norm_backward(Dtype dtype, const void* dy, const void* x, const float* a, const float* b,
                         const float* mean, const float* rstd, const GroupNormShape& s, bool silu,
                         void* dx, float* sum_dz, float* sum_dz_xhat, float* sum_a_dz,
                         float* sum_a_dz_xhat, cudaStream_t stream) {
  check_shape(s);
  with_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch_backward(StreamLaunch{stream}, static_cast<const T*>(dy), static_cast<const T*>(x), a, b,
                    mean, rstd, s, silu, static_cast<T*>(dx), sum_dz, sum_dz_xhat, sum_a_dz,
                    sum_a_dz_xhat);
  });
}

}  // namespace difftrain::model::kernels
