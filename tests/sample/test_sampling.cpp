// The samplers on Gaussian data N(mu, s^2), where the optimal noise prediction is known in closed
// form: E[eps | x_t] = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / (abar_t s^2 + 1 - abar_t). With
// it every step of either sampler is affine in x_t plus Gaussian noise, so the mean and variance
// of the samples follow from the sampler's recursion, computed here from the paper's formulas on
// the diffusion's tables (not through the code under test), and must match within sampling error.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>

#include "diffusion/respace.hpp"
#include "diffusion/sampling.hpp"
#include "diffusion/schedule.hpp"

namespace {

using namespace difftrain::diffusion;

constexpr double kMu = 0.3, kS = 0.1;  // |x_0 prediction| stays far below the clamp at 1
constexpr double kLearnedV = 0.2;      // the variance head's constant output (learned_range)

double at_(const at::Tensor& table, long i) {
  return table[i].item<double>();
}

// The Bayes-optimal eps predictor for data N(mu, s^2), as a network of the base diffusion.
ModelFn optimal_eps_model(const GaussianDiffusion& base, double mu = kMu, double s = kS) {
  return [base, mu, s](const at::Tensor& x, const at::Tensor& t) {
    const at::Tensor ab = base.alphas_cumprod.index_select(0, t).view({-1, 1, 1, 1});
    const at::Tensor eps = at::sqrt(1 - ab) * (x - at::sqrt(ab) * mu) / (ab * s * s + 1 - ab);
    if (!is_learned(base.model_var_type)) return eps.to(x.scalar_type());
    return at::cat({eps, at::full_like(eps, kLearnedV)}, 1).to(x.scalar_type());
  };
}

// The reverse-process variance sigma_t^2 of DDPM for each variance type (Ho et al. §3.2, Nichol &
// Dhariwal eq. 15).
double ddpm_variance(const GaussianDiffusion& d, long i) {
  const double beta = at_(d.betas, i);
  const double ab = at_(d.alphas_cumprod, i), abp = at_(d.alphas_cumprod_prev, i);
  const auto posterior = [&](long k) {
    return at_(d.betas, k) * (1 - at_(d.alphas_cumprod_prev, k)) / (1 - at_(d.alphas_cumprod, k));
  };
  const double small = i == 0 ? posterior(1) : beta * (1 - abp) / (1 - ab);
  switch (d.model_var_type) {
    case ModelVarType::fixed_small:
      return small;
    case ModelVarType::fixed_large:
      return i == 0 ? posterior(1) : beta;
    case ModelVarType::learned_range: {
      const double frac = (kLearnedV + 1) / 2;
      return std::exp(frac * std::log(beta) + (1 - frac) * std::log(small));
    }
    default:
      throw std::logic_error("not covered");
  }
}

struct Moments {
  double mean = 0, variance = 1;  // x_T ~ N(0, 1)
};

// x_{t-1} = a x_t + b + sigma z, step by step from t = K-1 down to 0.
Moments closed_form(const GaussianDiffusion& d, bool ddim, double eta) {
  Moments m;
  for (long i = d.num_timesteps - 1; i >= 0; --i) {
    const double ab = at_(d.alphas_cumprod, i), abp = at_(d.alphas_cumprod_prev, i);
    // eps_hat = k x - k sqrt(ab) mu; x0_hat = x / sqrt(ab) - sqrt(1/ab - 1) eps_hat = a0 x + b0.
    const double k = std::sqrt(1 - ab) / (ab * kS * kS + 1 - ab);
    const double r = std::sqrt(1 / ab), rm1 = std::sqrt(1 / ab - 1);
    const double a0 = r - rm1 * k, b0 = rm1 * k * std::sqrt(ab) * kMu;
    double a, b, var;
    if (!ddim) {
      // Ho et al. eq. 7: mu~ = coef1 x0 + coef2 x_t.
      const double coef1 = at_(d.betas, i) * std::sqrt(abp) / (1 - ab);
      const double coef2 = (1 - abp) * std::sqrt(1 - at_(d.betas, i)) / (1 - ab);
      a = coef1 * a0 + coef2;
      b = coef1 * b0;
      var = i > 0 ? ddpm_variance(d, i) : 0.0;
    } else {
      // Song et al. eq. 12 with the eps implied by x0_hat: (x / sqrt(ab) - x0) / sqrt(1/ab - 1).
      const double sigma = eta * std::sqrt((1 - abp) / (1 - ab)) * std::sqrt(1 - ab / abp);
      const double c = std::sqrt(1 - abp - sigma * sigma);
      const double ae = (r - a0) / rm1, be = -b0 / rm1;
      a = std::sqrt(abp) * a0 + c * ae;
      b = std::sqrt(abp) * b0 + c * be;
      var = i > 0 ? sigma * sigma : 0.0;
    }
    m.mean = a * m.mean + b;
    m.variance = a * a * m.variance + var;
  }
  return m;
}

struct Case {
  const char* name;
  ModelVarType var_type;
  const char* respacing;  // "" = every step
  bool ddim;
  double eta;
};

void check_case(const Case& c) {
  SCOPED_TRACE(c.name);
  const GaussianDiffusion base =
      make_gaussian_diffusion(BetaSchedule::linear, 100, ModelMeanType::epsilon, c.var_type);
  ModelFn model = optimal_eps_model(base);
  GaussianDiffusion d = base;
  if (*c.respacing) {
    const RespacedDiffusion r = respace(base, space_timesteps(100, c.respacing));
    d = r.diffusion;
    model = respaced_model(model, r.timestep_map);
  }
  const Moments want = closed_form(d, c.ddim, c.eta);

  SampleOptions o;
  o.dtype = at::kDouble;
  o.eta = c.eta;
  const int64_t n = 4000;
  const auto noise = generator_noise(at::make_generator<at::CPUGeneratorImpl>(7));
  const std::vector<int64_t> shape{n, 1, 4, 4};
  const at::Tensor x = c.ddim ? ddim_sample_loop(d, model, shape, noise, o)
                              : p_sample_loop(d, model, shape, noise, o);
  ASSERT_EQ(x.scalar_type(), at::kDouble);
  // Every element evolves on its own with its own noise: n * 16 independent draws.
  const double count = static_cast<double>(x.numel());
  const double mean = x.mean().item<double>(), variance = x.var().item<double>();
  const double mean_se = std::sqrt(want.variance / count);
  const double var_se = want.variance * std::sqrt(2.0 / (count - 1));
  EXPECT_NEAR(mean, want.mean, 5 * mean_se) << "variance " << variance;
  EXPECT_NEAR(variance, want.variance, 5 * var_se) << "mean " << mean;
  // The recursion itself brings the samples close to the data distribution.
  EXPECT_NEAR(want.mean, kMu, 0.02);
}

TEST(Sampling, DdpmFixedSmallMatchesItsClosedForm) {
  check_case({"ddpm fixed_small", ModelVarType::fixed_small, "", false, 0});
}
TEST(Sampling, DdpmFixedLargeMatchesItsClosedForm) {
  check_case({"ddpm fixed_large", ModelVarType::fixed_large, "", false, 0});
}
TEST(Sampling, DdpmLearnedRangeRespacedMatchesItsClosedForm) {
  check_case({"ddpm learned_range respaced 10", ModelVarType::learned_range, "10", false, 0});
}
TEST(Sampling, DdimDeterministicRespacedMatchesItsClosedForm) {
  check_case({"ddim eta 0 ddim10", ModelVarType::learned_range, "ddim10", true, 0});
}
TEST(Sampling, DdimEtaOneMatchesItsClosedForm) {
  check_case({"ddim eta 1, 20 steps", ModelVarType::fixed_small, "20", true, 1.0});
}

// A network whose x_0 prediction is far outside [-1, 1]: the last step returns the clamped
// prediction, so every sample lies in [-1, 1].
TEST(Sampling, SamplesAreClampedPredictionsAtTheEnd) {
  const GaussianDiffusion d = make_gaussian_diffusion(
      BetaSchedule::linear, 50, ModelMeanType::epsilon, ModelVarType::fixed_large);
  const ModelFn wild = [](const at::Tensor& x, const at::Tensor&) { return -10 * x - 3; };
  const auto noise = generator_noise(at::make_generator<at::CPUGeneratorImpl>(1));
  for (const bool ddim : {false, true}) {
    const at::Tensor x = ddim ? ddim_sample_loop(d, wild, {64, 1, 2, 2}, noise)
                              : p_sample_loop(d, wild, {64, 1, 2, 2}, noise);
    EXPECT_LE(x.abs().max().item<double>(), 1.0) << (ddim ? "ddim" : "ddpm");
    EXPECT_TRUE(at::isfinite(x).all().item<bool>());
  }
}

// With per-sample generators a sample depends on its own seed only, not on its batch.
TEST(Sampling, PerSampleNoiseMakesSamplesIndependentOfTheBatch) {
  const GaussianDiffusion d = make_gaussian_diffusion(
      BetaSchedule::linear, 30, ModelMeanType::epsilon, ModelVarType::fixed_small);
  const ModelFn model = optimal_eps_model(d);
  const auto generators = [](int64_t first, int64_t n) {
    std::vector<at::Generator> g;
    for (int64_t i = first; i < first + n; ++i)
      g.push_back(at::make_generator<at::CPUGeneratorImpl>(1000 + i));
    return g;
  };
  SampleOptions o;
  o.eta = 0.5;
  const at::Tensor all =
      ddim_sample_loop(d, model, {5, 1, 2, 2}, per_sample_noise(generators(0, 5)), o);
  const at::Tensor head =
      ddim_sample_loop(d, model, {2, 1, 2, 2}, per_sample_noise(generators(0, 2)), o);
  const at::Tensor tail =
      ddim_sample_loop(d, model, {3, 1, 2, 2}, per_sample_noise(generators(2, 3)), o);
  EXPECT_TRUE(at::allclose(all, at::cat({head, tail}), 1e-6, 1e-6));
  EXPECT_THROW(p_sample_loop(d, model, {4, 1, 2, 2}, per_sample_noise(generators(0, 5))),
               std::invalid_argument);
}

// The probability-flow ODE of Gaussian data N(mu, s^2) keeps w = (x - alpha mu) / std_t fixed,
// std_t^2 = alpha^2 s^2 + sigma^2 (the flow is the monotone map between the Gaussian marginals).
// So the exact solution from the first sampled level down to index 0, followed by the samplers'
// shared last step x0_hat(x, 0), is known in closed form; the samplers must converge to it, DDIM at
// first order and DPM-Solver++(2M) at second.
struct OdeErrors {
  double ddim = 0, dpm = 0;  // mean |sample - exact| over the batch
};

// T = 1000 and `steps` evenly spaced, as `difftrain sample --steps`.
OdeErrors ode_errors(BetaSchedule schedule, long steps) {
  constexpr double mu = 0.3, s = 0.5;
  const GaussianDiffusion base =
      make_gaussian_diffusion(schedule, 1000, ModelMeanType::epsilon, ModelVarType::fixed_small);
  const RespacedDiffusion r = respace(base, space_timesteps(1000, std::to_string(steps)));
  const ModelFn model = respaced_model(optimal_eps_model(base, mu, s), r.timestep_map);
  const std::vector<int64_t> shape{256, 1, 2, 2};
  SampleOptions o;
  o.dtype = at::kDouble;
  o.clip_denoised = false;  // x_0 predictions reach beyond [-1, 1] with s = 0.5
  const auto noise = [] { return generator_noise(at::make_generator<at::CPUGeneratorImpl>(3)); };
  const at::Tensor ddim = ddim_sample_loop(r.diffusion, model, shape, noise(), o);
  const at::Tensor dpm = dpm_solver_2m_sample_loop(r.diffusion, model, shape, noise(), o);

  const at::Tensor x_T = noise()(shape).to(at::kDouble);
  const auto level = [&](long i) {
    const double ab = at_(r.diffusion.alphas_cumprod, i);
    return std::pair{std::sqrt(ab), std::sqrt(ab * s * s + 1 - ab)};
  };
  const auto [alpha_T, std_T] = level(steps - 1);
  const auto [alpha_0, std_0] = level(0);
  const at::Tensor x_0 = alpha_0 * mu + std_0 * (x_T - alpha_T * mu) / std_T;
  const at::Tensor exact = mu + alpha_0 * s * s / (std_0 * std_0) * (x_0 - alpha_0 * mu);
  return {(ddim - exact).abs().mean().item<double>(), (dpm - exact).abs().mean().item<double>()};
}

// Measured (mean error; linear / cosine): DDIM 0.056 / 0.031 at 20 steps, 0.0071 / 0.0039 at 160;
// DPM-Solver++(2M) 0.019 / 0.0013 at 20, 0.0005 / 0.0009 at 40.
TEST(Sampling, DpmSolver2MSolvesTheProbabilityFlowFasterThanDdim) {
  for (const BetaSchedule schedule : {BetaSchedule::linear, BetaSchedule::cosine}) {
    SCOPED_TRACE(schedule == BetaSchedule::linear ? "linear" : "cosine");
    std::map<long, OdeErrors> e;
    for (long steps : {10, 20, 40, 160}) {
      e[steps] = ode_errors(schedule, steps);
      EXPECT_LT(e[steps].dpm, e[steps].ddim) << steps << " steps";
    }
    // DDIM converges to the exact solution at first order: the reference is right.
    EXPECT_NEAR(e[20].ddim / e[10].ddim, 0.5, 0.03);
    EXPECT_NEAR(e[40].ddim / e[20].ddim, 0.5, 0.03);
    EXPECT_LT(e[160].dpm, 1e-3);
    // 40 steps of DPM-Solver++ (20 for the cosine schedule) beat 160 of DDIM.
    const long dpm_steps = schedule == BetaSchedule::linear ? 40 : 20;
    EXPECT_LT(e[dpm_steps].dpm, e[160].ddim / 3);
  }
}

// Its first step, the step into index 0 and the last (x0_hat) are DDIM's: so is a run of 3 steps.
TEST(Sampling, DpmSolver2MIsDdimForThreeStepsOrFewer) {
  const GaussianDiffusion base = make_gaussian_diffusion(
      BetaSchedule::cosine, 100, ModelMeanType::epsilon, ModelVarType::learned_range);
  for (const char* spec : {"2", "3", "4"}) {
    SCOPED_TRACE(spec);
    const RespacedDiffusion r = respace(base, space_timesteps(100, spec));
    const ModelFn model = respaced_model(optimal_eps_model(base), r.timestep_map);
    SampleOptions o;
    o.dtype = at::kDouble;
    const auto noise = [] { return generator_noise(at::make_generator<at::CPUGeneratorImpl>(5)); };
    const at::Tensor ddim = ddim_sample_loop(r.diffusion, model, {8, 1, 2, 2}, noise(), o);
    const at::Tensor dpm = dpm_solver_2m_sample_loop(r.diffusion, model, {8, 1, 2, 2}, noise(), o);
    if (std::string(spec) == "4")
      EXPECT_GT((dpm - ddim).abs().max().item<double>(), 1e-6);
    else
      EXPECT_TRUE(at::allclose(dpm, ddim, 1e-12, 1e-12));
  }
  SampleOptions noisy;
  noisy.eta = 1;
  EXPECT_THROW(dpm_solver_2m_sample_loop(
                   base, optimal_eps_model(base), {1, 1, 1, 1},
                   generator_noise(at::make_generator<at::CPUGeneratorImpl>(5)), noisy),
               std::invalid_argument);
}

TEST(Sampling, ReportsEveryStep) {
  const GaussianDiffusion d = make_gaussian_diffusion(
      BetaSchedule::cosine, 12, ModelMeanType::epsilon, ModelVarType::fixed_small);
  std::vector<long> steps;
  SampleOptions o;
  o.on_step = [&](long i) { steps.push_back(i); };
  p_sample_loop(d, optimal_eps_model(d), {1, 1, 1, 1},
                generator_noise(at::make_generator<at::CPUGeneratorImpl>(1)), o);
  ASSERT_EQ(steps.size(), 12u);
  EXPECT_EQ(steps.front(), 11);
  EXPECT_EQ(steps.back(), 0);
}

}  // namespace
