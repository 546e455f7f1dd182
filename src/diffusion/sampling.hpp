// Drawing samples from the reverse process, as improved-diffusion's p_sample_loop (ancestral
// sampling, Ho et al. 2020 Alg. 2, with the model's own variance) and ddim_sample_loop (Song et
// al. 2021, eq. 12 with sigma scaled by eta), and with DPM-Solver++(2M) (Lu et al. 2022, Alg. 2),
// a second-order solver of the probability-flow ODE. All run over every index of the diffusion
// they are given: pass a respaced one (respace.hpp) to sample with fewer steps.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <functional>
#include <string_view>
#include <vector>

#include "diffusion/bound.hpp"
#include "diffusion/schedule.hpp"

namespace difftrain::diffusion {

// Standard normal noise of the given shape, on the CPU; the loops move it to the samples' device.
using SampleNoiseFn = std::function<at::Tensor(at::IntArrayRef shape)>;

// Noise from one generator: the samples depend on the batch they are drawn in.
SampleNoiseFn generator_noise(at::Generator generator);
// Row i from generators[i]: sample i depends only on its own generator, so a seeded sample is
// the same whatever the batch size or the number of ranks.
SampleNoiseFn per_sample_noise(std::vector<at::Generator> generators);

// Classifier guidance (Dhariwal & Nichol 2021, Alg. 1 and 2): the gradient s * grad log p(y | x_t)
// of a noisy classifier at (x_t, t), t indices of the diffusion sampled (respaced_model maps them
// like a network's).
using GuidanceFn = std::function<at::Tensor(const at::Tensor& x_t, const at::Tensor& t)>;

struct SampleOptions {
  bool clip_denoised = true;  // clamp the x_0 prediction to [-1, 1]
  // As guided-diffusion applies it: DDPM shifts the mean by the model's variance times the
  // gradient (condition_mean, Alg. 1); DDIM and DPM-Solver++ shift the noise prediction,
  // eps - sqrt(1 - abar_t) * gradient, and so the clamped x_0 prediction (condition_score, Alg. 2).
  GuidanceFn classifier_guidance;
  double eta = 0.0;  // DDIM only: 0 is deterministic, 1 is DDPM-like noise
  at::ScalarType dtype = at::kFloat;
  // Called after each step with the index just done (T-1 down to 0): a progress bar.
  std::function<void(long)> on_step;
};

// x_T ~ N(0, I), then x_{t-1} = mu(x_t, t) + sigma_t z for t = T-1..0 (no noise at t = 0).
// shape: [N, C, H, W]; model: raw network output for (x_t, t) with t indices of `d`.
at::Tensor p_sample_loop(const GaussianDiffusion& d, const ModelFn& model, at::IntArrayRef shape,
                         const SampleNoiseFn& noise, const SampleOptions& options = {});

// x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma_t^2) eps_hat + sigma_t z, with
// sigma_t = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1}).
at::Tensor ddim_sample_loop(const GaussianDiffusion& d, const ModelFn& model, at::IntArrayRef shape,
                            const SampleNoiseFn& noise, const SampleOptions& options = {});

// The samplers by name, as `difftrain sample --sampler` takes them.
enum class Sampler { ddpm, ddim, dpm_solver_2m };
// "ddpm", "ddim" or "dpm++2m"; std::invalid_argument listing them otherwise.
Sampler parse_sampler(std::string_view name);
const char* sampler_name(Sampler sampler);

// The loop of `sampler` (below).
at::Tensor sample_loop(Sampler sampler, const GaussianDiffusion& d, const ModelFn& model,
                       at::IntArrayRef shape, const SampleNoiseFn& noise,
                       const SampleOptions& options = {});

// DPM-Solver++(2M) on the data prediction x0_hat, with alpha = sqrt(abar), sigma = sqrt(1 - abar),
// lambda = log(alpha / sigma) and h_i = lambda_{i-1} - lambda_i:
//   x_{i-1} = (sigma_{i-1} / sigma_i) x_i - alpha_{i-1} (e^{-h_i} - 1) D_i,
//   D_i = (1 + 1 / (2 r_i)) x0_hat_i - 1 / (2 r_i) x0_hat_{i+1},  r_i = h_{i+1} / h_i.
// Three steps are first order (D = x0_hat, which is DDIM's step): the first, which has no
// x0_hat before it; the step into index 0, whose h dwarfs the one before (lambda goes 0.97 -> 4.61
// from t = 111 to t = 0 in 10 even steps of the linear schedule), so extrapolating over it
// amplifies errors, the reason diffusers makes its final step first order too; and the last,
// x_{-1} = x0_hat_0. The ODE is deterministic: only x_T is drawn, and options.eta must be 0.
at::Tensor dpm_solver_2m_sample_loop(const GaussianDiffusion& d, const ModelFn& model,
                                     at::IntArrayRef shape, const SampleNoiseFn& noise,
                                     const SampleOptions& options = {});

}  // namespace difftrain::diffusion
