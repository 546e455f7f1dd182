#include "diffusion/gaussian_diffusion.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "diffusion/distributions.hpp"
#include "diffusion/weighting.hpp"

namespace difftrain::diffusion {

at::Tensor extract(const at::Tensor& table, const at::Tensor& t, const at::Tensor& like) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = t.size(0);
  return table.to(like.device())
      .index_select(0, t.to(like.device()))
      .to(like.scalar_type())
      .view(shape);
}

at::Tensor q_sample(const GaussianDiffusion& d, const at::Tensor& x_start, const at::Tensor& t,
                    const at::Tensor& noise) {
  return extract(d.sqrt_alphas_cumprod, t, x_start) * x_start +
         extract(d.sqrt_one_minus_alphas_cumprod, t, x_start) * noise;
}

GaussianStats q_posterior_mean_variance(const GaussianDiffusion& d, const at::Tensor& x_start,
                                        const at::Tensor& x_t, const at::Tensor& t) {
  GaussianStats q;
  q.mean = extract(d.posterior_mean_coef1, t, x_t) * x_start +
           extract(d.posterior_mean_coef2, t, x_t) * x_t;
  q.variance = extract(d.posterior_variance, t, x_t).expand_as(x_t);
  q.log_variance = extract(d.posterior_log_variance_clipped, t, x_t).expand_as(x_t);
  return q;
}

at::Tensor predict_xstart_from_eps(const GaussianDiffusion& d, const at::Tensor& x_t,
                                   const at::Tensor& t, const at::Tensor& eps) {
  return extract(d.sqrt_recip_alphas_cumprod, t, x_t) * x_t -
         extract(d.sqrt_recipm1_alphas_cumprod, t, x_t) * eps;
}

at::Tensor predict_xstart_from_xprev(const GaussianDiffusion& d, const at::Tensor& x_t,
                                     const at::Tensor& t, const at::Tensor& xprev) {
  // Inverts mean = coef1 x_0 + coef2 x_t.
  return (xprev - extract(d.posterior_mean_coef2, t, x_t) * x_t) /
         extract(d.posterior_mean_coef1, t, x_t);
}

at::Tensor predict_eps_from_xstart(const GaussianDiffusion& d, const at::Tensor& x_t,
                                   const at::Tensor& t, const at::Tensor& pred_xstart) {
  // Not (sqrt(1/abar) x_t - x_0) / sqrt(1/abar - 1), which is inf/inf where abar_t = 0.
  return (x_t - extract(d.sqrt_alphas_cumprod, t, x_t) * pred_xstart) /
         extract(d.sqrt_one_minus_alphas_cumprod, t, x_t);
}

at::Tensor v_target(const GaussianDiffusion& d, const at::Tensor& x_start, const at::Tensor& t,
                    const at::Tensor& noise) {
  return extract(d.sqrt_alphas_cumprod, t, x_start) * noise -
         extract(d.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start;
}

at::Tensor predict_xstart_from_v(const GaussianDiffusion& d, const at::Tensor& x_t,
                                 const at::Tensor& t, const at::Tensor& v) {
  return extract(d.sqrt_alphas_cumprod, t, x_t) * x_t -
         extract(d.sqrt_one_minus_alphas_cumprod, t, x_t) * v;
}

at::Tensor predict_eps_from_v(const GaussianDiffusion& d, const at::Tensor& x_t,
                              const at::Tensor& t, const at::Tensor& v) {
  return extract(d.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t +
         extract(d.sqrt_alphas_cumprod, t, x_t) * v;
}

void check_model_output(const GaussianDiffusion& d, const at::Tensor& model_output,
                        const at::Tensor& x_t) {
  const int64_t C = x_t.size(1);
  const int64_t want = is_learned(d.model_var_type) ? 2 * C : C;
  bool ok = model_output.dim() == x_t.dim() && model_output.size(0) == x_t.size(0) &&
            model_output.size(1) == want;
  for (int64_t i = 2; ok && i < x_t.dim(); ++i)
    ok = model_output.size(i) == x_t.size(i);
  if (!ok)
    throw std::invalid_argument("model output has shape " + c10::str(model_output.sizes()) +
                                " but x_t " + c10::str(x_t.sizes()) + " with variance type " +
                                to_string(d.model_var_type) + " needs " + std::to_string(want) +
                                " channels");
}

ModelPrediction p_mean_variance(const GaussianDiffusion& d, const at::Tensor& model_output,
                                const at::Tensor& x_t, const at::Tensor& t, bool clip_denoised) {
  check_model_output(d, model_output, x_t);
  const int64_t C = x_t.size(1);
  ModelPrediction p;
  at::Tensor mean_head = model_output;
  switch (d.model_var_type) {
    case ModelVarType::learned: {
      mean_head = model_output.slice(1, 0, C);
      p.log_variance = model_output.slice(1, C, 2 * C);
      p.variance = at::exp(p.log_variance);
      break;
    }
    case ModelVarType::learned_range: {
      // Nichol & Dhariwal eq. 15: log Sigma = v log beta_t + (1 - v) log beta~_t, v = (out+1)/2.
      mean_head = model_output.slice(1, 0, C);
      const at::Tensor frac = (model_output.slice(1, C, 2 * C) + 1.0) / 2.0;
      const at::Tensor min_log = extract(d.posterior_log_variance_clipped, t, x_t);
      const at::Tensor max_log = extract(at::log(d.betas), t, x_t);
      p.log_variance = frac * max_log + (1.0 - frac) * min_log;
      p.variance = at::exp(p.log_variance);
      break;
    }
    case ModelVarType::fixed_large: {
      // beta_t, with beta~_1 at t = 0 so that the decoder variance is not beta_0 ~ 0.
      const at::Tensor variance =
          at::cat({d.posterior_variance.slice(0, 1, 2), d.betas.slice(0, 1)});
      p.variance = extract(variance, t, x_t).expand_as(x_t);
      p.log_variance = extract(at::log(variance), t, x_t).expand_as(x_t);
      break;
    }
    case ModelVarType::fixed_small: {
      p.variance = extract(d.posterior_variance, t, x_t).expand_as(x_t);
      p.log_variance = extract(d.posterior_log_variance_clipped, t, x_t).expand_as(x_t);
      break;
    }
  }

  const auto process_xstart = [&](at::Tensor x) { return clip_denoised ? x.clamp(-1, 1) : x; };
  switch (d.model_mean_type) {
    case ModelMeanType::previous_x: {
      p.pred_xstart = process_xstart(predict_xstart_from_xprev(d, x_t, t, mean_head));
      p.mean = mean_head;
      break;
    }
    case ModelMeanType::start_x: {
      p.pred_xstart = process_xstart(mean_head);
      p.mean = q_posterior_mean_variance(d, p.pred_xstart, x_t, t).mean;
      break;
    }
    case ModelMeanType::epsilon: {
      p.pred_xstart = process_xstart(predict_xstart_from_eps(d, x_t, t, mean_head));
      p.mean = q_posterior_mean_variance(d, p.pred_xstart, x_t, t).mean;
      break;
    }
    case ModelMeanType::v: {
      p.pred_xstart = process_xstart(predict_xstart_from_v(d, x_t, t, mean_head));
      p.mean = q_posterior_mean_variance(d, p.pred_xstart, x_t, t).mean;
      break;
    }
  }
  return p;
}

VbTerms vb_terms_bpd(const GaussianDiffusion& d, const at::Tensor& model_output,
                     const at::Tensor& x_start, const at::Tensor& x_t, const at::Tensor& t,
                     bool clip_denoised) {
  const GaussianStats q = q_posterior_mean_variance(d, x_start, x_t, t);
  const ModelPrediction p = p_mean_variance(d, model_output, x_t, t, clip_denoised);
  const at::Tensor kl =
      mean_flat(normal_kl(q.mean, q.log_variance, p.mean, p.log_variance)) / std::log(2.0);
  const at::Tensor decoder_nll =
      -mean_flat(discretized_gaussian_log_likelihood(x_start, p.mean, 0.5 * p.log_variance)) /
      std::log(2.0);
  // L_0 at t == 0, L_t (a KL) for t >= 1 (Ho et al. eq. 5).
  return {at::where(t.to(kl.device()) == 0, decoder_nll, kl), p.pred_xstart};
}

TrainingTerms training_terms(const GaussianDiffusion& d, const LossSpec& loss,
                             const at::Tensor& model_output, const at::Tensor& x_start,
                             const at::Tensor& x_t, const at::Tensor& t, const at::Tensor& noise) {
  check_model_output(d, model_output, x_t);
  const int64_t C = x_t.size(1);
  const at::Tensor zeros = at::zeros({x_start.size(0)}, x_start.options());
  TrainingTerms terms{zeros, zeros, zeros, zeros, zeros};

  if (loss.vb) {
    at::Tensor vb_output = model_output;
    if (loss.mse && is_learned(d.model_var_type))
      vb_output = at::cat({model_output.slice(1, 0, C).detach(), model_output.slice(1, C)}, 1);
    terms.vb_bits = vb_terms_bpd(d, vb_output, x_start, x_t, t, /*clip_denoised=*/false).bits;
    terms.vb = terms.vb_bits * loss.vb_scale;
  }
  if (loss.mse) {
    at::Tensor target;
    switch (d.model_mean_type) {
      case ModelMeanType::epsilon:
        target = noise;
        break;
      case ModelMeanType::start_x:
        target = x_start;
        break;
      case ModelMeanType::previous_x:
        target = q_posterior_mean_variance(d, x_start, x_t, t).mean;
        break;
      case ModelMeanType::v:
        target = v_target(d, x_start, t, noise);
        break;
    }
    terms.mse = mean_flat((target - model_output.slice(1, 0, C)).square());
    terms.weighted_mse = loss.weighting == SimpleWeighting::none
                             ? terms.mse
                             : extract(simple_term_weights(d, loss), t, terms.mse) * terms.mse;
  }
  terms.loss = terms.weighted_mse + terms.vb;
  return terms;
}

at::Tensor prior_bpd(const GaussianDiffusion& d, const at::Tensor& x_start) {
  const at::Tensor t_last =
      at::full({x_start.size(0)}, d.num_timesteps - 1, x_start.options().dtype(at::kLong));
  const at::Tensor qt_mean = extract(d.sqrt_alphas_cumprod, t_last, x_start) * x_start;
  const at::Tensor qt_log_variance =
      extract(d.log_one_minus_alphas_cumprod, t_last, x_start).expand_as(x_start);
  const at::Tensor zero = at::zeros_like(x_start);
  return mean_flat(normal_kl(qt_mean, qt_log_variance, zero, zero)) / std::log(2.0);
}

}  // namespace difftrain::diffusion
