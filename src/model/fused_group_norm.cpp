#include "model/fused_group_norm.hpp"

#include <torch/autograd.h>
#include <torch/torch.h>

#include <stdexcept>
#include <string>
#include <tuple>

#ifdef DIFFTRAIN_HAVE_GROUP_NORM_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "model/group_norm_kernels.hpp"
#endif

namespace difftrain::model {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Normalised {
  at::Tensor y, mean, rstd;  // mean and rstd [N, G]
};

// Dense in NCHW or NHWC, the two layouts the kernels read.
at::Tensor dense(const at::Tensor& x) {
  if (x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)))
    return x;
  return x.contiguous();
}

// ---- From ATen ops: the reference the kernels are tested against, and the CPU's path ----------

at::ScalarType compute_type(const at::Tensor& x) {
  return at::promote_types(x.scalar_type(), at::kFloat);
}

// [N, C, ...] -> [N, G, Cg, HW] in the compute dtype.
at::Tensor grouped(const at::Tensor& t, int64_t groups, at::ScalarType type) {
  return t.to(type).reshape({t.size(0), groups, t.size(1) / groups, -1});
}

// [N, C] -> [N, G, Cg, 1].
at::Tensor per_channel(const at::Tensor& t, int64_t groups) {
  return t.view({t.size(0), groups, -1, 1});
}

// [N, G, Cg, HW] back to x's shape, dtype and layout.
at::Tensor like(const at::Tensor& t, const at::Tensor& x) {
  return t.reshape(x.sizes()).to(x.scalar_type(), false, false, x.suggest_memory_format());
}

Normalised composite_forward(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
                             int64_t groups, double eps, bool silu) {
  const auto xg = grouped(x, groups, compute_type(x));
  const auto [var, mean] = at::var_mean(xg, {2, 3}, /*correction=*/0, /*keepdim=*/true);
  const auto rstd = (var + eps).rsqrt();
  const auto z = (xg - mean) * rstd * per_channel(a, groups) + per_channel(b, groups);
  return {like(silu ? at::silu(z) : z, x), mean.flatten(1), rstd.flatten(1)};
}

// dx, da, db; see group_norm_kernels.hpp for the formulas.
variable_list composite_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& mean,
                                 const at::Tensor& rstd, int64_t groups, bool silu) {
  const auto type = compute_type(x);
  const auto a4 = per_channel(a, groups);
  const auto mean4 = mean.view({mean.size(0), groups, 1, 1});
  const auto rstd4 = rstd.view({rstd.size(0), groups, 1, 1});
  const auto x_hat = (grouped(x, groups, type) - mean4) * rstd4;
  const auto dyg = grouped(dy, groups, type);
  const auto dz = silu ? at::silu_backward(dyg, x_hat * a4 + per_channel(b, groups)) : dyg;
  const auto sum_dz = dz.sum(3, /*keepdim=*/true);                 // [N, G, Cg, 1]
  const auto sum_dz_xhat = (dz * x_hat).sum(3, /*keepdim=*/true);  // [N, G, Cg, 1]
  const auto sum_a_dz = (a4 * sum_dz).sum(2, /*keepdim=*/true);    // [N, G, 1, 1]
  const auto sum_a_dz_xhat = (a4 * sum_dz_xhat).sum(2, /*keepdim=*/true);
  const double m = static_cast<double>(dz.size(2) * dz.size(3));
  const auto dx = rstd4 * (a4 * dz - (sum_a_dz + x_hat * sum_a_dz_xhat) / m);
  return {like(dx, x), sum_dz_xhat.view(a.sizes()), sum_dz.view(b.sizes())};
}

// ---- The CUDA kernels --------------------------------------------------------------------------

#ifdef DIFFTRAIN_HAVE_GROUP_NORM_KERNELS
kernels::Dtype kernel_dtype(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf:
      return kernels::Dtype::float16;
    case at::kBFloat16:
      return kernels::Dtype::bfloat16;
    default:
      return kernels::Dtype::float32;
  }
}

kernels::GroupNormShape kernel_shape(const at::Tensor& x, int64_t groups) {
  const int64_t n = x.size(0), c = x.size(1);
  return {n, c, n * c == 0 ? 0 : x.numel() / (n * c), groups,
          x.is_contiguous() ? kernels::Layout::nchw : kernels::Layout::nhwc};
}

Normalised kernel_forward(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
                          int64_t groups, double eps, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto stats = x.options().dtype(at::kFloat);
  Normalised out{at::empty_like(x), at::empty({x.size(0), groups}, stats),
                 at::empty({x.size(0), groups}, stats)};
  kernels::group_norm_forward(
      kernel_dtype(x), x.const_data_ptr(), a.const_data_ptr<float>(), b.const_data_ptr<float>(),
      kernel_shape(x, groups), static_cast<float>(eps), silu, out.y.mutable_data_ptr(),
      out.mean.mutable_data_ptr<float>(), out.rstd.mutable_data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  return out;
}

variable_list kernel_backward(const at::Tensor& dy_any, const at::Tensor& x, const at::Tensor& a,
                              const at::Tensor& b, const at::Tensor& mean, const at::Tensor& rstd,
                              int64_t groups, bool silu) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto dy = dy_any.to(x.scalar_type()).contiguous(x.suggest_memory_format());
  const auto sums = a.options();
  const int64_t n = x.size(0), c = x.size(1);
  auto dx = at::empty_like(x);
  auto sum_dz = at::empty({n, c}, sums), sum_dz_xhat = at::empty({n, c}, sums);
  auto sum_a_dz = at::empty({n, groups}, sums), sum_a_dz_xhat = at::empty({n, groups}, sums);
  kernels::group_norm_backward(
      kernel_dtype(x), dy.const_data_ptr(), x.const_data_ptr(), a.const_data_ptr<float>(),
      b.const_data_ptr<float>(), mean.const_data_ptr<float>(), rstd.const_data_ptr<float>(),
      kernel_shape(x, groups), silu, dx.mutable_data_ptr(), sum_dz.mutable_data_ptr<float>(),
      sum_dz_xhat.mutable_data_ptr<float>(), sum_a_dz.mutable_data_ptr<float>(),
      sum_a_dz_xhat.mutable_data_ptr<float>(),
      c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  return {dx, sum_dz_xhat, sum_dz};
}
#endif

// ---- The autograd node -------------------------------------------------------------------------

struct FusedGroupNorm : torch::autograd::Function<FusedGroupNorm> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& a,
                            const at::Tensor& b, int64_t groups, double eps, bool silu) {
    const bool kernels = fused_group_norm_uses_kernels(x, groups);
    Normalised out;
#ifdef DIFFTRAIN_HAVE_GROUP_NORM_KERNELS
    if (kernels) out = kernel_forward(x, a, b, groups, eps, silu);
#endif
    if (!kernels) out = composite_forward(x, a, b, groups, eps, silu);
    ctx->save_for_backward({x, a, b, out.mean, out.rstd});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["silu"] = silu;
    ctx->saved_data["kernels"] = kernels;
    return out.y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(6);
    const auto s = ctx->get_saved_variables();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool silu = ctx->saved_data["silu"].toBool();
    variable_list d;
#ifdef DIFFTRAIN_HAVE_GROUP_NORM_KERNELS
    if (ctx->saved_data["kernels"].toBool())
      d = kernel_backward(grads[0], s[0], s[1], s[2], s[3], s[4], groups, silu);
#endif
    if (d.empty()) d = composite_backward(grads[0], s[0], s[1], s[2], s[3], s[4], groups, silu);
    return {d[0], d[1], d[2], at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool fused_group_norm_kernels_built() {
#ifdef DIFFTRAIN_HAVE_GROUP_NORM_KERNELS
  return true;
#else
  return false;
#endif
}

bool fused_group_norm_uses_kernels(const at::Tensor& x, int64_t groups) {
#ifdef DIFFTRAIN_HAVE_GROUP_NORM_KERNELS
  const auto t = x.scalar_type();
  return x.is_cuda() && (t == at::kFloat || t == at::kHalf || t == at::kBFloat16) && x.dim() >= 2 &&
         groups > 0 && x.size(1) / groups <= kernels::kMaxChannelsPerGroup;
#else
  (void)x;
  (void)groups;
  return false;
#endif
}

at::Tensor fused_group_norm(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
                            int64_t groups, double eps, bool silu) {
  if (x.dim() < 2 || groups <= 0 || x.size(1) % groups != 0)
    throw std::invalid_argument("fused_group_norm: " + std::to_string(x.dim()) + "-d input with " +
                                std::to_string(x.dim() >= 2 ? x.size(1) : 0) + " channels in " +
                                std::to_string(groups) +
                                " groups: need [N, C, ...] with C divisible by the groups");
  // The affine per (n, c), dense, in the compute dtype: expanded weights become per-sample
  // copies, and autograd's expand sums their gradients back over the batch.
  const auto type = compute_type(x);
  const auto per_sample = [&](const at::Tensor& t) {
    return t.to(type).expand({x.size(0), x.size(1)}).contiguous();
  };
  return FusedGroupNorm::apply(dense(x), per_sample(a), per_sample(b), groups, eps, silu);
}

}  // namespace difftrain::model
