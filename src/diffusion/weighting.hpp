// The weight w(t) on the simple (mse) term of the loss, and the checks of which objectives are
// defined. A weighting is a weight on the x_0 error, converted to the prediction target through
// |eps - eps^|^2 = SNR |x_0 - x_0^|^2 and |v - v^|^2 = (SNR + 1) |x_0 - x_0^|^2 (Hang et al.
// 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy", §3.3), so that a weighting
// means the same objective whatever the target. The VLB term is never weighted.
#pragma once

#include <ATen/core/Tensor.h>

#include "diffusion/schedule.hpp"

namespace difftrain::diffusion {

// SNR(t) = abar_t / (1 - abar_t) (Kingma et al. 2021, "Variational Diffusion Models", eq. 2),
// [T] float64; 0 at t = T-1 for a zero-terminal-SNR schedule.
at::Tensor snr(const GaussianDiffusion& d);

// w(t), [T] float64, for d's prediction target (SNR = snr(d), gamma = min_snr_gamma,
// b = sigmoid_bias):
//   weighting  epsilon                  start_x                  v
//   none       1                        1                        1
//   min_snr    min(SNR, gamma) / SNR    min(SNR, gamma)          min(SNR, gamma) / (SNR + 1)
//   snr        1                        SNR                      SNR / (SNR + 1)
//   sigmoid    sigmoid(b - log SNR)     SNR sigmoid(b - log SNR) SNR / (SNR + 1) sigmoid(b - log
//   SNR)
// previous_x has only none. Throws std::invalid_argument for an undefined combination.
at::Tensor simple_term_weights(const GaussianDiffusion& d, const LossSpec& loss);

// Throws std::invalid_argument with the reason when the objective is undefined: a weighting
// other than none for previous_x, a gamma <= 0, or the epsilon target with a zero terminal SNR
// (x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) divides by zero at t = T-1).
void check_objective(ModelMeanType mean_type, SimpleWeighting weighting, bool zero_terminal_snr,
                     double min_snr_gamma = 5.0);

// Whether the schedule's last alphas_cumprod is 0 (Lin et al. 2024).
bool has_zero_terminal_snr(const GaussianDiffusion& d);

}  // namespace difftrain::diffusion
