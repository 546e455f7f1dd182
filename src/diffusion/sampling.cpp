#include "diffusion/sampling.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "diffusion/gaussian_diffusion.hpp"

namespace difftrain::diffusion {
namespace {

// The samples live on the device of the diffusion's tables, in options.dtype.
at::Tensor draw(const SampleNoiseFn& noise, at::IntArrayRef shape, const GaussianDiffusion& d,
                const SampleOptions& o) {
  return noise(shape).to(d.betas.device(), o.dtype);
}

at::Tensor timesteps(long t, const at::Tensor& x) {
  return at::full({x.size(0)}, t, x.options().dtype(at::kLong));
}

// 1 where t > 0: no noise is added on the last step, which returns the mean.
at::Tensor nonzero_mask(const at::Tensor& t, const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = x.size(0);
  return (t != 0).to(x.scalar_type()).view(shape);
}

// guided-diffusion's condition_score: the x_0 prediction of eps' = eps - sqrt(1 - abar_t) *
// gradient, which is x0_hat + (1 - abar_t) / sqrt(abar_t) * gradient, clamped again with
// clip_denoised. guided-diffusion does not clamp again. Where abar_t is near 0 the factor is huge
// (2e4 at t = T-1 of the cosine schedule, 1.6e2 of the linear one), and an unclamped x_0 ruins the
// next step as a model's unclamped x_0 would.
at::Tensor guided_xstart(const GaussianDiffusion& d, const at::Tensor& x, const at::Tensor& t,
                         const at::Tensor& pred_xstart, const SampleOptions& o) {
  if (!o.classifier_guidance) return pred_xstart;
  const at::Tensor coef = d.sqrt_one_minus_alphas_cumprod * d.sqrt_recipm1_alphas_cumprod;
  const at::Tensor guided = pred_xstart + extract(coef, t, x) * o.classifier_guidance(x, t);
  return o.clip_denoised ? guided.clamp(-1, 1) : guided;
}

}  // namespace

SampleNoiseFn generator_noise(at::Generator generator) {
  return [generator](at::IntArrayRef shape) {
    return at::randn(shape, generator, at::TensorOptions().dtype(at::kFloat));
  };
}

SampleNoiseFn per_sample_noise(std::vector<at::Generator> generators) {
  return [generators = std::move(generators)](at::IntArrayRef shape) {
    if (shape.empty() || shape[0] != static_cast<int64_t>(generators.size()))
      throw std::invalid_argument("per_sample_noise: " + std::to_string(generators.size()) +
                                  " generators for a batch of " +
                                  std::to_string(shape.empty() ? 0 : shape[0]));
    std::vector<at::Tensor> rows;
    rows.reserve(generators.size());
    for (const at::Generator& g : generators)
      rows.push_back(at::randn(shape.slice(1), g, at::TensorOptions().dtype(at::kFloat)));
    return at::stack(rows);
  };
}

at::Tensor p_sample_loop(const GaussianDiffusion& d, const ModelFn& model, at::IntArrayRef shape,
                         const SampleNoiseFn& noise, const SampleOptions& o) {
  at::Tensor x = draw(noise, shape, d, o);
  for (long i = d.num_timesteps - 1; i >= 0; --i) {
    const at::Tensor t = timesteps(i, x);
    const ModelPrediction p = p_mean_variance(d, model(x, t), x, t, o.clip_denoised);
    // guided-diffusion's condition_mean: mu + Sigma * gradient.
    const at::Tensor mean =
        o.classifier_guidance ? p.mean + p.variance * o.classifier_guidance(x, t) : p.mean;
    // Drawn at t = 0 too, as improved-diffusion, so a seed gives its samples.
    const at::Tensor z = draw(noise, shape, d, o);
    x = mean + nonzero_mask(t, x) * at::exp(0.5 * p.log_variance) * z;
    if (o.on_step) o.on_step(i);
  }
  return x;
}

at::Tensor ddim_sample_loop(const GaussianDiffusion& d, const ModelFn& model, at::IntArrayRef shape,
                            const SampleNoiseFn& noise, const SampleOptions& o) {
  // The per-step coefficients as float64 tables, gathered at t like the diffusion's own.
  const at::Tensor& abar = d.alphas_cumprod;
  const at::Tensor& abar_prev = d.alphas_cumprod_prev;
  const at::Tensor sigma =
      o.eta * at::sqrt((1 - abar_prev) / (1 - abar)) * at::sqrt(1 - abar / abar_prev);
  const at::Tensor eps_coef = at::sqrt((1 - abar_prev - sigma.square()).clamp_min(0));
  const at::Tensor xstart_coef = at::sqrt(abar_prev);

  at::Tensor x = draw(noise, shape, d, o);
  for (long i = d.num_timesteps - 1; i >= 0; --i) {
    const at::Tensor t = timesteps(i, x);
    const at::Tensor pred_xstart = guided_xstart(
        d, x, t, p_mean_variance(d, model(x, t), x, t, o.clip_denoised).pred_xstart, o);
    // The eps the (clamped) x_0 prediction implies, so that both stay consistent.
    const at::Tensor eps = predict_eps_from_xstart(d, x, t, pred_xstart);
    const at::Tensor mean =
        extract(xstart_coef, t, x) * pred_xstart + extract(eps_coef, t, x) * eps;
    const at::Tensor z = draw(noise, shape, d, o);
    x = mean + nonzero_mask(t, x) * extract(sigma, t, x) * z;
    if (o.on_step) o.on_step(i);
  }
  return x;
}

at::Tensor dpm_solver_2m_sample_loop(const GaussianDiffusion& d, const ModelFn& model,
                                     at::IntArrayRef shape, const SampleNoiseFn& noise,
                                     const SampleOptions& o) {
  if (o.eta != 0.0)
    throw std::invalid_argument("dpm_solver_2m_sample_loop: the solver is deterministic (eta 0)");
  // alpha_i, sigma_i and lambda_i in float64 on the host: the step coefficients are scalars.
  const at::Tensor abar_table = d.alphas_cumprod.to(at::kCPU, at::kDouble).contiguous();
  const auto abar = abar_table.accessor<double, 1>();
  const auto alpha = [&](long i) { return std::sqrt(abar[i]); };
  const auto sigma = [&](long i) { return std::sqrt(1 - abar[i]); };
  const auto lambda = [&](long i) { return std::log(alpha(i) / sigma(i)); };

  at::Tensor x = draw(noise, shape, d, o);
  at::Tensor x0_hat_prev;  // x0_hat of the step before: the second-order correction
  double h_prev = 0;
  for (long i = d.num_timesteps - 1; i >= 0; --i) {
    const at::Tensor t = timesteps(i, x);
    const at::Tensor x0_hat = guided_xstart(
        d, x, t, p_mean_variance(d, model(x, t), x, t, o.clip_denoised).pred_xstart, o);
    if (i == 0) {
      x = x0_hat;
    } else {
      const double h = lambda(i - 1) - lambda(i);
      at::Tensor D = x0_hat;
      if (x0_hat_prev.defined() && i > 1) {
        const double r = h_prev / h;
        D = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_hat_prev;
      }
      // e^{-h} - 1 as expm1: h is small when the steps are many.
      x = (sigma(i - 1) / sigma(i)) * x - alpha(i - 1) * std::expm1(-h) * D;
      x0_hat_prev = x0_hat;
      h_prev = h;
    }
    if (o.on_step) o.on_step(i);
  }
  return x;
}

Sampler parse_sampler(std::string_view name) {
  for (const Sampler s : {Sampler::ddpm, Sampler::ddim, Sampler::dpm_solver_2m})
    if (name == sampler_name(s)) return s;
  throw std::invalid_argument("unknown sampler '" + std::string(name) +
                              "': valid samplers are ddpm, ddim, dpm++2m");
}

const char* sampler_name(Sampler sampler) {
  switch (sampler) {
    case Sampler::ddpm:
      return "ddpm";
    case Sampler::ddim:
      return "ddim";
    case Sampler::dpm_solver_2m:
      return "dpm++2m";
  }
  return "?";
}

at::Tensor sample_loop(Sampler sampler, const GaussianDiffusion& d, const ModelFn& model,
                       at::IntArrayRef shape, const SampleNoiseFn& noise,
                       const SampleOptions& options) {
  switch (sampler) {
    case Sampler::ddim:
      return ddim_sample_loop(d, model, shape, noise, options);
    case Sampler::dpm_solver_2m:
      return dpm_solver_2m_sample_loop(d, model, shape, noise, options);
    case Sampler::ddpm:
      break;
  }
  return p_sample_loop(d, model, shape, noise, options);
}

}  // namespace difftrain::diffusion
