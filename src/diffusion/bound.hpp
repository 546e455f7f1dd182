// The full variational bound in bits/dim: L_T + sum_{t>=1} L_t + L_0 (Ho et al. eq. 5), one
// network evaluation per timestep, as improved-diffusion's calc_bpd_loop.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>

#include "diffusion/schedule.hpp"

namespace difftrain::diffusion {

// The network: raw output for (x_t, t), t being the indices 0..T-1 of this diffusion.
using ModelFn = std::function<at::Tensor(const at::Tensor& x_t, const at::Tensor& t)>;
// The noise used to draw x_t at timestep t, shaped like x_start.
using NoiseFn = std::function<at::Tensor(long t)>;

struct BoundTerms {
  at::Tensor total_bpd;   // [N]  sum_t vb[:, t] + prior_bpd
  at::Tensor prior_bpd;   // [N]  L_T
  at::Tensor vb;          // [N, T] L_t in bits/dim, ascending t; column 0 is the decoder NLL
  at::Tensor xstart_mse;  // [N, T] mean over dims of (x0_hat - x0)^2
  at::Tensor mse;         // [N, T] mean over dims of (eps_hat - eps)^2, eps_hat from x0_hat
};

// Evaluates every timestep (clip_denoised clamps x0_hat as sampling does). Called per timestep
// with the same x_start: on_step(t) lets callers draw a progress bar.
BoundTerms calc_bpd_loop(const GaussianDiffusion& d, const ModelFn& model,
                         const at::Tensor& x_start, bool clip_denoised, const NoiseFn& noise,
                         const std::function<void(long)>& on_step = {});

}  // namespace difftrain::diffusion
