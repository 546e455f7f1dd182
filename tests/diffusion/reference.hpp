// An independent scalar float64 evaluation of the golden README's formulas (§4), one element at
// a time, to check the batched tensor code on combinations the reference files do not cover.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "diffusion/types.hpp"

namespace difftrain::diffusion::reference {

struct Tables {
  long T = 0;
  std::vector<double> betas, abar, abar_prev, posterior_variance, posterior_log_variance_clipped,
      coef1, coef2;
};

// zero_terminal_snr: Lin et al. 2024, Algorithm 1 (sqrt(abar) shifted to end at 0, scaled to keep
// its first value).
inline Tables tables(BetaSchedule schedule, long T, bool zero_terminal_snr = false) {
  Tables r;
  r.T = T;
  r.betas.resize(T);
  if (schedule == BetaSchedule::linear) {
    const double k = 1000.0 / T, lo = k * 1e-4, hi = k * 0.02;
    for (long i = 0; i < T; ++i)
      r.betas[i] = lo + (hi - lo) * i / (T - 1);
  } else if (schedule == BetaSchedule::cosine) {
    auto f = [](double u) { return std::pow(std::cos((u + 0.008) / 1.008 * M_PI / 2), 2); };
    for (long i = 0; i < T; ++i)
      r.betas[i] = std::min(1 - f(double(i + 1) / T) / f(double(i) / T), 0.999);
  } else {  // sigmoid, Chen 2023 Algorithm 1 with start -3, end 3, tau 1
    auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
    auto f = [&](double u) {
      return std::clamp((sig(3.0) - sig(6 * u - 3)) / (sig(3.0) - sig(-3.0)), 1e-9, 1.0);
    };
    for (long i = 0; i < T; ++i)
      r.betas[i] = std::min(1 - f(double(i + 1) / T) / f(double(i) / T), 0.999);
  }
  if (zero_terminal_snr) {
    std::vector<double> s(T);
    double cum = 1.0;
    for (long t = 0; t < T; ++t)
      s[t] = std::sqrt(cum *= 1 - r.betas[t]);
    const double first = s[0], last = s[T - 1];
    double prev = 1.0;
    for (long t = 0; t < T; ++t) {
      const double abar = std::pow((s[t] - last) * first / (first - last), 2);
      r.betas[t] = 1 - abar / prev;
      prev = abar;
    }
  }
  double cum = 1.0;
  for (long t = 0; t < T; ++t) {
    r.abar_prev.push_back(cum);
    cum *= 1 - r.betas[t];
    r.abar.push_back(cum);
    r.posterior_variance.push_back(r.betas[t] * (1 - r.abar_prev[t]) / (1 - cum));
    r.coef1.push_back(r.betas[t] * std::sqrt(r.abar_prev[t]) / (1 - cum));
    r.coef2.push_back((1 - r.abar_prev[t]) * std::sqrt(1 - r.betas[t]) / (1 - cum));
  }
  for (long t = 0; t < T; ++t)
    r.posterior_log_variance_clipped.push_back(std::log(r.posterior_variance[t == 0 ? 1 : t]));
  return r;
}

struct Terms {
  double mse = 0, vb = 0, loss = 0, vb_bits = 0;
};

inline double approx_cdf(double x) {
  return 0.5 * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
}

// One sample: D elements of x0 and noise; `mean_head` and (learned variances) `var_head` hold
// D elements each.
inline Terms training_terms(const Tables& tb, ModelMeanType mean_type, ModelVarType var_type,
                            LossType loss_type, const double* x0, const double* noise,
                            const double* mean_head, const double* var_head, long t, long D) {
  const double abar = tb.abar[t], c0 = tb.coef1[t], ct = tb.coef2[t];
  double kl_sum = 0, nll_sum = 0, mse_sum = 0;
  for (long i = 0; i < D; ++i) {
    const double xt = std::sqrt(abar) * x0[i] + std::sqrt(1 - abar) * noise[i];
    const double q_mean = c0 * x0[i] + ct * xt, q_logvar = tb.posterior_log_variance_clipped[t];
    double p_logvar = 0;
    switch (var_type) {
      case ModelVarType::fixed_small:
        p_logvar = q_logvar;
        break;
      case ModelVarType::fixed_large:
        p_logvar = std::log(t == 0 ? tb.posterior_variance[1] : tb.betas[t]);
        break;
      case ModelVarType::learned:
        p_logvar = var_head[i];
        break;
      case ModelVarType::learned_range: {
        const double w = (var_head[i] + 1) / 2;
        p_logvar = w * std::log(tb.betas[t]) + (1 - w) * q_logvar;
        break;
      }
    }
    const double m = mean_head[i];
    double pred_x0 = 0, p_mean = 0, target = 0;
    switch (mean_type) {
      case ModelMeanType::epsilon:
        pred_x0 = std::sqrt(1 / abar) * xt - std::sqrt(1 / abar - 1) * m;
        p_mean = c0 * pred_x0 + ct * xt;
        target = noise[i];
        break;
      case ModelMeanType::start_x:
        p_mean = c0 * m + ct * xt;
        target = x0[i];
        break;
      case ModelMeanType::previous_x:
        p_mean = m;
        target = q_mean;
        break;
      case ModelMeanType::v:  // v = sqrt(abar) eps - sqrt(1 - abar) x0
        pred_x0 = std::sqrt(abar) * xt - std::sqrt(1 - abar) * m;
        p_mean = c0 * pred_x0 + ct * xt;
        target = std::sqrt(abar) * noise[i] - std::sqrt(1 - abar) * x0[i];
        break;
    }
    kl_sum += 0.5 * (-1 + p_logvar - q_logvar + std::exp(q_logvar - p_logvar) +
                     (q_mean - p_mean) * (q_mean - p_mean) * std::exp(-p_logvar));
    const double sigma = std::exp(0.5 * p_logvar);
    const double cdf_plus = approx_cdf((x0[i] - p_mean + 1 / 255.0) / sigma);
    const double cdf_min = approx_cdf((x0[i] - p_mean - 1 / 255.0) / sigma);
    const double prob = x0[i] < -0.999  ? cdf_plus
                        : x0[i] > 0.999 ? 1 - cdf_min
                                        : cdf_plus - cdf_min;
    nll_sum -= std::log(std::max(prob, 1e-12));
    mse_sum += (target - m) * (target - m);
  }
  Terms r;
  const bool has_mse = is_mse(loss_type);
  const bool has_vb = !has_mse || is_learned(var_type);
  const double T = static_cast<double>(tb.T);
  const double scale = loss_type == LossType::rescaled_kl    ? T
                       : loss_type == LossType::rescaled_mse ? T / 1000
                                                             : 1;
  if (has_vb) r.vb_bits = (t == 0 ? nll_sum : kl_sum) / D / std::log(2.0);
  r.vb = r.vb_bits * scale;
  if (has_mse) r.mse = mse_sum / D;
  r.loss = r.mse + r.vb;
  return r;
}

}  // namespace difftrain::diffusion::reference
