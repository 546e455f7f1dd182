#include "diffusion/bpd_estimate.hpp"

#include <ATen/ATen.h>

#include <stdexcept>
#include <vector>

#include "diffusion/gaussian_diffusion.hpp"

namespace difftrain::diffusion {
namespace {

// Uniform in [lo, hi) from the generator (hi > lo).
long uniform_in(long lo, long hi, at::Generator& generator) {
  return at::randint(lo, hi, {1}, generator, at::TensorOptions().dtype(at::kLong)).item<long>();
}

}  // namespace

StratifiedTimesteps stratified_timesteps(long T, long k, at::Generator generator) {
  if (k < 1 || k > T)
    throw std::invalid_argument("bits/dim estimate: " + std::to_string(k) +
                                " timesteps is outside [1, T = " + std::to_string(T) + "]");
  std::vector<int64_t> t;
  std::vector<double> weights;
  if (k == 1) {
    t.push_back(uniform_in(0, T, generator));
    weights.push_back(static_cast<double>(T));
  } else {
    t.push_back(0);  // the decoder term, exactly
    weights.push_back(1.0);
    // Strata [1 + s(T-1)/(K-1), 1 + (s+1)(T-1)/(K-1)) of [1, T), sizes differing by at most one.
    const long strata = k - 1, span = T - 1;
    for (long s = 0; s < strata; ++s) {
      const long lo = 1 + s * span / strata, hi = 1 + (s + 1) * span / strata;
      t.push_back(uniform_in(lo, hi, generator));
      weights.push_back(static_cast<double>(hi - lo));
    }
  }
  return {at::tensor(t, at::kLong), at::tensor(weights, at::kDouble)};
}

BpdEstimate estimate_bpd(const GaussianDiffusion& d, const ModelFn& model,
                         const at::Tensor& x_start, long k, at::Generator generator,
                         bool clip_denoised, const NoiseFn& noise) {
  BpdEstimate e;
  e.timesteps = stratified_timesteps(d.num_timesteps, k, generator);
  const auto* steps = e.timesteps.t.data_ptr<int64_t>();
  std::vector<at::Tensor> vb;
  for (long j = 0; j < k; ++j) {
    const at::Tensor t = at::full({x_start.size(0)}, steps[j], x_start.options().dtype(at::kLong));
    const at::Tensor eps =
        noise ? noise(steps[j])
              : at::randn(x_start.sizes(), generator, at::TensorOptions().dtype(at::kFloat))
                    .to(x_start.device(), x_start.scalar_type());
    const at::Tensor x_t = q_sample(d, x_start, t, eps);
    vb.push_back(vb_terms_bpd(d, model(x_t, t), x_start, x_t, t, clip_denoised).bits);
  }
  e.vb = at::stack(vb, 1);
  e.prior_bpd = prior_bpd(d, x_start);
  const at::Tensor weights = e.timesteps.weights.to(e.vb.device(), e.vb.scalar_type());
  e.total_bpd = (e.vb * weights).sum(1) + e.prior_bpd;
  return e;
}

}  // namespace difftrain::diffusion
