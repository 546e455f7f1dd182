// The network as the diffusion calls it: eps_theta(x_t, t, y) for integer timesteps t of the
// training diffusion, where the network itself sees t * timestep_scale (t * 1000 / T with
// diffusion.rescale_timesteps, as improved-diffusion's _WrappedModel). Training, held-out
// bits/dim, sampling and evaluation all call the network through it.
#pragma once

#include <ATen/core/Tensor.h>

#include "diffusion/bound.hpp"
#include "model/unet.hpp"

namespace difftrain::train {

struct Config;

struct Denoiser {
  model::UNet net{nullptr};
  double timestep_scale = 1.0;
  // A noise-conditioned upsampler's (model.low_res_noise) level where no per-sample levels are
  // given: the timestep its low-resolution input was noised to (sample --low-res-noise; 0, nearly
  // clean, for held-out bits/dim, eval and the training's sample grids).
  int64_t low_res_noise_t = 0;

  // x_t [N, C, H, W], t [N] int64 timesteps, y [N] class labels or undefined, low_res an
  // upsampler's low-resolution image [N, C, h, w] in [-1, 1] or undefined, low_res_t [N] int64
  // the levels it was noised to (training), or undefined for low_res_noise_t.
  at::Tensor operator()(const at::Tensor& x_t, const at::Tensor& t, const at::Tensor& y = {},
                        const at::Tensor& low_res = {}, const at::Tensor& low_res_t = {}) const;
  // The same for the diffusion code (bound, samplers, bits/dim estimates), conditions fixed.
  diffusion::ModelFn with_labels(const at::Tensor& y, const at::Tensor& low_res = {}) const;
  // What an upsampler is conditioned on when x_0 is known (training, held-out bits/dim, eval):
  // x_0 area-downsampled to low_res_size (guided-diffusion's load_superres_data,
  // F.interpolate(mode="area")). Undefined for other models.
  at::Tensor low_res_of(const at::Tensor& x_start) const;
  // Classifier-free guidance (Ho & Salimans 2022, Eq. 6 with w = scale - 1) for the samplers:
  // the mean output uncond + scale * (cond - uncond), from one network call on the doubled batch
  // with labels y and `null_label`. A learned variance comes from the conditional call, as in
  // GLIDE. The mean output is eps, x_0, v or the posterior mean, each affine in the others given
  // x_t, so guiding it guides them all alike. scale 1 is the conditional model and 0 the
  // unconditional one, each one plain call.
  // rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
  // Eq. 15-16; diffusers' guidance_rescale) blends the guided mean with its copy rescaled to the
  // conditional mean's standard deviation per sample: phi * guided * std(cond) / std(guided) +
  // (1 - phi) * guided. It applies to the guided call only (scales other than 0 and 1).
  diffusion::ModelFn with_guidance(const at::Tensor& y, int64_t null_label, double scale,
                                   double rescale = 0.0, const at::Tensor& low_res = {}) const;
};

// The config's timestep scale: 1000 / T with diffusion.rescale_timesteps, else 1.
Denoiser make_denoiser(model::UNet net, const Config& config);

// The noise level of a fraction f in [0, 1] of the diffusion's T timesteps: round(f (T - 1)).
int64_t low_res_noise_level(double fraction, int64_t num_timesteps);

}  // namespace difftrain::train
