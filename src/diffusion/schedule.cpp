#include "diffusion/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace difftrain::diffusion {
namespace {

void check_num_timesteps(BetaSchedule schedule, long T) {
  if (T < 2)
    throw std::invalid_argument("diffusion steps T = " + std::to_string(T) +
                                " is out of range: T must be >= 2 (the clipped posterior "
                                "log-variance at t = 0 uses t = 1)");
  if (schedule == BetaSchedule::linear && T <= 20)
    throw std::invalid_argument("diffusion steps T = " + std::to_string(T) +
                                " is out of range for the linear schedule: T must be > 20 "
                                "(its last beta is 20/T)");
}

// Nichol & Dhariwal eq. 17: alpha_bar(u) = cos^2(((u + s) / (1 + s)) * pi / 2), s = 0.008.
double cosine_alpha_bar(double u) {
  const double c = std::cos((u + 0.008) / 1.008 * M_PI / 2.0);
  return c * c;
}

// Chen 2023, "On the importance of noise scheduling for diffusion models", Algorithm 1 (sigmoid
// schedule, start = -3, end = 3, tau = 1): abar(u) = (v_end - sigmoid((u (end - start) + start) /
// tau)) / (v_end - v_start), clipped to [1e-9, 1].
double sigmoid_alpha_bar(double u) {
  constexpr double start = -3.0, end = 3.0, tau = 1.0;
  const auto sigmoid = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  const double v_start = sigmoid(start / tau), v_end = sigmoid(end / tau);
  const double abar = (v_end - sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start);
  return std::clamp(abar, 1e-9, 1.0);
}

}  // namespace

at::Tensor get_named_beta_schedule(BetaSchedule schedule, long T) {
  check_num_timesteps(schedule, T);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  if (schedule == BetaSchedule::linear) {
    const double scale = 1000.0 / static_cast<double>(T);
    return at::linspace(scale * 1e-4, scale * 0.02, T, f64);
  }
  // betas_for_alpha_bar, with betas capped at 0.999 to avoid a singularity at t = T-1.
  const auto alpha_bar = schedule == BetaSchedule::cosine ? cosine_alpha_bar : sigmoid_alpha_bar;
  std::vector<double> betas(T);
  for (long i = 0; i < T; ++i) {
    const double t1 = static_cast<double>(i) / T, t2 = static_cast<double>(i + 1) / T;
    betas[i] = std::min(1.0 - alpha_bar(t2) / alpha_bar(t1), 0.999);
  }
  return at::tensor(betas, f64);
}

at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas_in) {
  const at::Tensor betas = betas_in.to(at::kDouble);
  at::Tensor sqrt_abar = at::sqrt(at::cumprod(1.0 - betas, 0));
  const at::Tensor first = sqrt_abar.slice(0, 0, 1).clone(), last = sqrt_abar.slice(0, -1).clone();
  // Shift so the last is 0, then scale so the first is back to its value.
  sqrt_abar = (sqrt_abar - last) * first / (first - last);
  const at::Tensor abar = sqrt_abar.square();
  const at::Tensor alphas = at::cat({abar.slice(0, 0, 1), abar.slice(0, 1) / abar.slice(0, 0, -1)});
  return 1.0 - alphas;
}

GaussianDiffusion make_gaussian_diffusion(const at::Tensor& betas_in, ModelMeanType mean_type,
                                          ModelVarType var_type) {
  if (betas_in.dim() != 1 || betas_in.size(0) < 2)
    throw std::invalid_argument("betas must be a 1-D table with T >= 2 entries");
  GaussianDiffusion d;
  d.num_timesteps = betas_in.size(0);
  d.model_mean_type = mean_type;
  d.model_var_type = var_type;
  const at::Tensor betas = betas_in.to(at::kDouble).contiguous();
  if ((betas <= 0).any().item<bool>() || (betas > 1).any().item<bool>())
    throw std::invalid_argument("betas must lie in (0, 1]");

  const at::Tensor alphas = 1.0 - betas;
  d.betas = betas;
  d.alphas_cumprod = at::cumprod(alphas, 0);
  d.alphas_cumprod_prev =
      at::cat({at::ones({1}, betas.options()), d.alphas_cumprod.slice(0, 0, -1)});
  d.sqrt_alphas_cumprod = at::sqrt(d.alphas_cumprod);
  d.sqrt_one_minus_alphas_cumprod = at::sqrt(1.0 - d.alphas_cumprod);
  d.log_one_minus_alphas_cumprod = at::log(1.0 - d.alphas_cumprod);
  d.sqrt_recip_alphas_cumprod = at::sqrt(1.0 / d.alphas_cumprod);
  d.sqrt_recipm1_alphas_cumprod = at::sqrt(1.0 / d.alphas_cumprod - 1.0);

  // Ho et al. eq. 7: beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t).
  d.posterior_variance = betas * (1.0 - d.alphas_cumprod_prev) / (1.0 - d.alphas_cumprod);
  d.posterior_log_variance_clipped =
      at::log(at::cat({d.posterior_variance.slice(0, 1, 2), d.posterior_variance.slice(0, 1)}));
  d.posterior_mean_coef1 = betas * at::sqrt(d.alphas_cumprod_prev) / (1.0 - d.alphas_cumprod);
  d.posterior_mean_coef2 =
      (1.0 - d.alphas_cumprod_prev) * at::sqrt(alphas) / (1.0 - d.alphas_cumprod);
  return d;
}

GaussianDiffusion make_gaussian_diffusion(BetaSchedule schedule, long num_timesteps,
                                          ModelMeanType mean_type, ModelVarType var_type) {
  return make_gaussian_diffusion(get_named_beta_schedule(schedule, num_timesteps), mean_type,
                                 var_type);
}

GaussianDiffusion to_device(const GaussianDiffusion& d, const c10::Device& device) {
  GaussianDiffusion r = d;
  for (at::Tensor* table :
       {&r.betas, &r.alphas_cumprod, &r.alphas_cumprod_prev, &r.sqrt_alphas_cumprod,
        &r.sqrt_one_minus_alphas_cumprod, &r.log_one_minus_alphas_cumprod,
        &r.sqrt_recip_alphas_cumprod, &r.sqrt_recipm1_alphas_cumprod, &r.posterior_variance,
        &r.posterior_log_variance_clipped, &r.posterior_mean_coef1, &r.posterior_mean_coef2})
    *table = table->to(device);
  return r;
}

}  // namespace difftrain::diffusion
