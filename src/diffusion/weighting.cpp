#include "diffusion/weighting.hpp"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>

namespace difftrain::diffusion {

at::Tensor snr(const GaussianDiffusion& d) {
  return d.alphas_cumprod / (1.0 - d.alphas_cumprod);
}

bool has_zero_terminal_snr(const GaussianDiffusion& d) {
  return d.alphas_cumprod[d.num_timesteps - 1].item<double>() == 0.0;
}

void check_objective(ModelMeanType mean_type, SimpleWeighting weighting, bool zero_terminal_snr,
                     double min_snr_gamma) {
  if (mean_type == ModelMeanType::epsilon && zero_terminal_snr)
    throw std::invalid_argument(
        "the epsilon target is undefined with a zero terminal SNR: at t = T-1, x_0 = (x_t - "
        "sqrt(1 - abar) eps) / sqrt(abar) divides by abar = 0; use the v or start_x target");
  if (mean_type == ModelMeanType::previous_x && weighting != SimpleWeighting::none)
    throw std::invalid_argument("weighting '" + to_string(weighting) +
                                "' is defined on the x_0 error, which the previous_x target "
                                "does not give in closed form; use none, or the epsilon, "
                                "start_x or v target");
  if (weighting == SimpleWeighting::min_snr && !(min_snr_gamma > 0))
    throw std::invalid_argument("min_snr needs gamma > 0, got " + std::to_string(min_snr_gamma));
}

at::Tensor simple_term_weights(const GaussianDiffusion& d, const LossSpec& loss) {
  const at::Tensor ones = at::ones_like(d.alphas_cumprod);
  if (loss.weighting == SimpleWeighting::none) return ones;
  check_objective(d.model_mean_type, loss.weighting, /*zero_terminal_snr=*/false,
                  loss.min_snr_gamma);
  const at::Tensor s = snr(d);
  // The weight on the x_0 error (Hang et al. §3.3 for min_snr), and for sigmoid the weight on
  // the eps error sigmoid(b - lambda), lambda = log SNR (Kingma & Gao 2023).
  at::Tensor eps_weight, x0_weight;
  switch (loss.weighting) {
    case SimpleWeighting::none:
      return ones;
    case SimpleWeighting::min_snr:
      x0_weight = at::clamp_max(s, loss.min_snr_gamma);
      eps_weight = x0_weight / s;
      break;
    case SimpleWeighting::snr:
      x0_weight = s;
      eps_weight = ones;
      break;
    case SimpleWeighting::sigmoid:
      eps_weight = at::sigmoid(loss.sigmoid_bias - at::log(s));
      x0_weight = s * eps_weight;
      break;
  }
  switch (d.model_mean_type) {
    case ModelMeanType::epsilon:
      return eps_weight;
    case ModelMeanType::start_x:
      return x0_weight;
    case ModelMeanType::v:
      return x0_weight / (s + 1.0);  // |v - v^|^2 = (SNR + 1) |x_0 - x_0^|^2
    case ModelMeanType::previous_x:
      break;
  }
  throw std::logic_error("unreachable: previous_x has no weighting");
}

}  // namespace difftrain::diffusion
