// Gaussian log-densities and divergences used by the variational bound (Ho et al. 2020, §3.3).
#pragma once

#include <ATen/core/Tensor.h>

namespace difftrain::diffusion {

// KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats.
at::Tensor normal_kl(const at::Tensor& mean1, const at::Tensor& logvar1, const at::Tensor& mean2,
                     const at::Tensor& logvar2);

// Phi(x) ~= 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
at::Tensor approx_standard_normal_cdf(const at::Tensor& x);

// log P(x) of data x in [-1, 1] quantised to 8 bits (bins of width 2/255) under N(means,
// e^(2 log_scales)); the edge bins (x < -0.999, x > 0.999) extend to -inf / +inf.
at::Tensor discretized_gaussian_log_likelihood(const at::Tensor& x, const at::Tensor& means,
                                               const at::Tensor& log_scales);

// Mean over every dimension but the batch dimension.
at::Tensor mean_flat(const at::Tensor& x);

}  // namespace difftrain::diffusion
