#include "diffusion/bound_summary.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace difftrain::diffusion {

at::Tensor bound_sums(const BoundTerms& b) {
  const at::Tensor total = b.total_bpd.to(at::kDouble);
  const at::Tensor count = at::full({1}, static_cast<double>(total.size(0)), total.options());
  return at::cat({count, total.sum().view({1}), total.square().sum().view({1}),
                  b.prior_bpd.to(at::kDouble).sum().view({1}), b.vb.to(at::kDouble).sum(0),
                  b.xstart_mse.to(at::kDouble).sum(0), b.mse.to(at::kDouble).sum(0)});
}

at::Tensor empty_bound_sums(long T, const c10::Device& device) {
  return at::zeros({4 + 3 * T}, at::TensorOptions(device).dtype(at::kDouble));
}

BoundSummary summarize_bound(const at::Tensor& sums_in, long T) {
  const at::Tensor sums = sums_in.to(at::kCPU, at::kDouble).contiguous();
  if (sums.dim() != 1 || sums.size(0) != 4 + 3 * T)
    throw std::invalid_argument("bound sums of " + std::to_string(sums.numel()) +
                                " entries do not fit T = " + std::to_string(T));
  const double* s = sums.data_ptr<double>();
  BoundSummary r;
  const double n = s[0];
  r.count = static_cast<int64_t>(n);
  if (r.count == 0) throw std::invalid_argument("no images were evaluated");
  r.total_bpd = s[1] / n;
  // Sample variance of the per-image totals, from the sums (fine in float64 at bits/dim scale).
  const double variance = n > 1 ? std::max(0.0, (s[2] - n * r.total_bpd * r.total_bpd) / (n - 1))
                                : std::numeric_limits<double>::quiet_NaN();
  r.total_bpd_stderr = std::sqrt(variance / n);
  r.prior_bpd = s[3] / n;
  for (long t = 0; t < T; ++t) {
    r.vb.push_back(s[4 + t] / n);
    r.xstart_mse.push_back(s[4 + T + t] / n);
    r.mse.push_back(s[4 + 2 * T + t] / n);
  }
  r.decoder_bpd = r.vb[0];
  for (long t = 1; t < T; ++t)
    r.terms_bpd += r.vb[t];
  return r;
}

}  // namespace difftrain::diffusion
