// The forward process, its posterior, the model's reverse distribution and the per-sample
// training terms, following improved-diffusion's gaussian_diffusion.py. Every function works on
// batched tensors of any float dtype and device; the float64 tables are gathered at t and cast to
// the dtype of the data, so the dtype of x_start is the compute precision.
#pragma once

#include <ATen/core/Tensor.h>

#include "diffusion/schedule.hpp"

namespace difftrain::diffusion {

struct GaussianStats {
  at::Tensor mean;
  at::Tensor variance;
  at::Tensor log_variance;
};

struct ModelPrediction {
  at::Tensor mean;
  at::Tensor variance;
  at::Tensor log_variance;
  at::Tensor pred_xstart;
};

struct TrainingTerms {
  at::Tensor mse;           // [N] L_simple, zeros when the loss has no mse term
  at::Tensor vb;            // [N] L_t as it enters the loss (scale included), zeros when absent
  at::Tensor loss;          // [N] weighted_mse + vb
  at::Tensor vb_bits;       // [N] L_t in bits/dim before scaling, zeros when absent
  at::Tensor weighted_mse;  // [N] w(t) * mse (weighting.hpp); = mse with weighting none
};

// table[t] reshaped to broadcast against `like` ([N, 1, 1, ...]), in like's dtype and device.
at::Tensor extract(const at::Tensor& table, const at::Tensor& t, const at::Tensor& like);

// x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (Ho et al. eq. 4).
at::Tensor q_sample(const GaussianDiffusion& d, const at::Tensor& x_start, const at::Tensor& t,
                    const at::Tensor& noise);

// q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7); log_variance is the clipped one.
GaussianStats q_posterior_mean_variance(const GaussianDiffusion& d, const at::Tensor& x_start,
                                        const at::Tensor& x_t, const at::Tensor& t);

at::Tensor predict_xstart_from_eps(const GaussianDiffusion& d, const at::Tensor& x_t,
                                   const at::Tensor& t, const at::Tensor& eps);
at::Tensor predict_xstart_from_xprev(const GaussianDiffusion& d, const at::Tensor& x_t,
                                     const at::Tensor& t, const at::Tensor& xprev);
// eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t): finite at a zero terminal SNR too.
at::Tensor predict_eps_from_xstart(const GaussianDiffusion& d, const at::Tensor& x_t,
                                   const at::Tensor& t, const at::Tensor& pred_xstart);

// v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, §4), and back:
// x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v, eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v.
at::Tensor v_target(const GaussianDiffusion& d, const at::Tensor& x_start, const at::Tensor& t,
                    const at::Tensor& noise);
at::Tensor predict_xstart_from_v(const GaussianDiffusion& d, const at::Tensor& x_t,
                                 const at::Tensor& t, const at::Tensor& v);
at::Tensor predict_eps_from_v(const GaussianDiffusion& d, const at::Tensor& x_t,
                              const at::Tensor& t, const at::Tensor& v);

// p(x_{t-1} | x_t) from the raw network output ([N, C] or [N, 2C] channels for learned
// variances). clip_denoised clamps the x_0 prediction to [-1, 1] (sampling and evaluation only).
ModelPrediction p_mean_variance(const GaussianDiffusion& d, const at::Tensor& model_output,
                                const at::Tensor& x_t, const at::Tensor& t, bool clip_denoised);

// L_t in bits/dim per sample: the decoder NLL L_0 where t == 0, KL(q || p) elsewhere.
struct VbTerms {
  at::Tensor bits;         // [N]
  at::Tensor pred_xstart;  // [N, C, ...]
};
VbTerms vb_terms_bpd(const GaussianDiffusion& d, const at::Tensor& model_output,
                     const at::Tensor& x_start, const at::Tensor& x_t, const at::Tensor& t,
                     bool clip_denoised);

// Per-sample training terms. With an mse loss and a learned variance the VLB term sees the mean
// head stop-gradiented, so it trains the variance head only (Nichol & Dhariwal §3.1); it is the
// same KL whatever the target, through the posterior mean the target implies. The mse term is
// weighted by loss.weighting (weighting.hpp), the VLB term never.
TrainingTerms training_terms(const GaussianDiffusion& d, const LossSpec& loss,
                             const at::Tensor& model_output, const at::Tensor& x_start,
                             const at::Tensor& x_t, const at::Tensor& t, const at::Tensor& noise);

// L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim per sample.
at::Tensor prior_bpd(const GaussianDiffusion& d, const at::Tensor& x_start);

// Checks that model_output has the channel count the variance type needs; throws
// std::invalid_argument naming both shapes otherwise.
void check_model_output(const GaussianDiffusion& d, const at::Tensor& model_output,
                        const at::Tensor& x_t);

}  // namespace difftrain::diffusion
