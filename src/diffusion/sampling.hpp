// Drawing samples from the reverse process, as improved-diffusion's p_sample_loop (ancestral
// sampling, Ho et al. 2020 Alg. 2, with the model's own variance) and ddim_sample_loop (Song et
// al. 2021, eq. 12 with sigma scaled by eta). Both run over every index of the diffusion they are
// given: pass a respaced one (respace.hpp) to sample with fewer steps.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <functional>
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

struct SampleOptions {
  bool clip_denoised = true;  // clamp the x_0 prediction to [-1, 1]
  double eta = 0.0;           // DDIM only: 0 is deterministic, 1 is DDPM-like noise
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

}  // namespace difftrain::diffusion
