// Beta schedules and the float64 tables of a Gaussian diffusion (Ho et al. 2020; Nichol &
// Dhariwal 2021, "Improved DDPM").
#pragma once

#include <ATen/core/Tensor.h>

#include "diffusion/types.hpp"

namespace difftrain::diffusion {

// betas[T] in float64. Throws std::invalid_argument naming T when it is out of range:
// T >= 2 for every schedule, T > 20 for linear (its last beta is 20/T).
at::Tensor get_named_beta_schedule(BetaSchedule schedule, long num_timesteps);

// Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1:
// shifts and scales sqrt(abar_t) so that sqrt(abar_0) is unchanged and sqrt(abar_{T-1}) = 0,
// i.e. the last beta becomes 1 and the terminal SNR 0. float64 in, float64 out.
at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas);

// Every table the forward process, the posterior and the model distribution need, indexed by
// t = 0..T-1, float64, on one device. Built from any betas, so respaced schedules reuse it.
struct GaussianDiffusion {
  long num_timesteps = 0;
  ModelMeanType model_mean_type = ModelMeanType::epsilon;
  ModelVarType model_var_type = ModelVarType::fixed_small;

  at::Tensor betas;
  at::Tensor alphas_cumprod;       // abar_t
  at::Tensor alphas_cumprod_prev;  // abar_{t-1}, with abar_{-1} = 1
  at::Tensor sqrt_alphas_cumprod;
  at::Tensor sqrt_one_minus_alphas_cumprod;
  at::Tensor log_one_minus_alphas_cumprod;
  at::Tensor sqrt_recip_alphas_cumprod;
  at::Tensor sqrt_recipm1_alphas_cumprod;
  // q(x_{t-1} | x_t, x_0): variance beta~_t (Ho et al. eq. 7), its log clipped at t = 0 to the
  // value at t = 1 (beta~_0 = 0), and the mean coefficients of x_0 and x_t.
  at::Tensor posterior_variance;
  at::Tensor posterior_log_variance_clipped;
  at::Tensor posterior_mean_coef1;
  at::Tensor posterior_mean_coef2;
};

GaussianDiffusion make_gaussian_diffusion(const at::Tensor& betas, ModelMeanType mean_type,
                                          ModelVarType var_type);
GaussianDiffusion make_gaussian_diffusion(BetaSchedule schedule, long num_timesteps,
                                          ModelMeanType mean_type, ModelVarType var_type);

// The same tables on another device (still float64).
GaussianDiffusion to_device(const GaussianDiffusion& d, const c10::Device& device);

}  // namespace difftrain::diffusion
