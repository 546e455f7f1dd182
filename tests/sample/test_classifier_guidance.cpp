// Classifier guidance in the samplers, on data whose every term is known in closed form: two
// classes, x_0 | y ~ N(mu_y, s^2 I), equally likely. Then p(x_t | y) = N(sqrt(abar) mu_y, v I),
// v = abar s^2 + 1 - abar, and the Bayes-optimal unconditional eps, the class-conditional eps and
// the classifier's grad log p(y | x_t) all follow. Guided by that classifier at scale 1, the
// unconditional model's eps becomes the conditional one exactly (Dhariwal & Nichol, eq. 14), so
// DDIM and DPM-Solver++ must match the conditional model step for step; DDPM (guided through its
// mean, Alg. 1) must draw the chosen class.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "diffusion/respace.hpp"
#include "diffusion/sampling.hpp"
#include "diffusion/schedule.hpp"

namespace {

using namespace difftrain::diffusion;

constexpr double kMu[2] = {-0.4, 0.4};
constexpr double kS = 0.1;

// abar_t and v_t for each row, and the class means sqrt(abar) mu_y.
std::pair<at::Tensor, at::Tensor> level(const GaussianDiffusion& d, const at::Tensor& t) {
  const at::Tensor ab = d.alphas_cumprod.index_select(0, t).view({-1, 1, 1, 1});
  return {ab, ab * kS * kS + 1 - ab};
}

// p(y | x_t) for y = 0, 1: softmax of -|x - sqrt(abar) mu_y|^2 / (2 v), [N, 2].
at::Tensor posterior(const at::Tensor& x, const at::Tensor& ab, const at::Tensor& v) {
  std::vector<at::Tensor> logits;
  for (const double mu : kMu)
    logits.push_back(-((x - at::sqrt(ab) * mu).square() / (2 * v)).sum({1, 2, 3}));
  return at::softmax(at::stack(logits, 1), 1);
}

// The Bayes-optimal eps of the mixture: sqrt(1 - abar) sum_y p(y | x) (x - sqrt(abar) mu_y) / v.
ModelFn unconditional_eps(const GaussianDiffusion& d) {
  return [d](const at::Tensor& x, const at::Tensor& t) {
    const auto [ab, v] = level(d, t);
    const at::Tensor w = posterior(x, ab, v);
    at::Tensor eps = at::zeros_like(x);
    for (int y = 0; y < 2; ++y)
      eps += w.select(1, y).view({-1, 1, 1, 1}) * (x - at::sqrt(ab) * kMu[y]);
    return at::sqrt(1 - ab) * eps / v;
  };
}

// The Bayes-optimal eps of class y alone.
ModelFn conditional_eps(const GaussianDiffusion& d, int y) {
  return [d, y](const at::Tensor& x, const at::Tensor& t) {
    const auto [ab, v] = level(d, t);
    return at::sqrt(1 - ab) * (x - at::sqrt(ab) * kMu[y]) / v;
  };
}

// scale * grad_x log p(y | x_t) = scale * (sum_k p(k | x) (x - m_k) - (x - m_y)) / v.
GuidanceFn classifier_gradient(const GaussianDiffusion& d, int y, double scale) {
  return [d, y, scale](const at::Tensor& x, const at::Tensor& t) {
    const auto [ab, v] = level(d, t);
    const at::Tensor w = posterior(x, ab, v);
    at::Tensor expected = at::zeros_like(x);
    for (int k = 0; k < 2; ++k)
      expected += w.select(1, k).view({-1, 1, 1, 1}) * (x - at::sqrt(ab) * kMu[k]);
    return scale * (expected - (x - at::sqrt(ab) * kMu[y])) / v;
  };
}

const std::vector<int64_t> kShape{512, 1, 2, 2};

SampleNoiseFn noise() {
  return generator_noise(at::make_generator<at::CPUGeneratorImpl>(11));
}

SampleOptions float64(GuidanceFn guidance = {}) {
  SampleOptions o;
  o.dtype = at::kDouble;
  o.classifier_guidance = std::move(guidance);
  return o;
}

TEST(ClassifierGuidance, TurnsTheUnconditionalModelIntoTheConditionalOneForDdimAndDpmSolver) {
  const GaussianDiffusion base = make_gaussian_diffusion(
      BetaSchedule::cosine, 1000, ModelMeanType::epsilon, ModelVarType::fixed_small);
  const RespacedDiffusion r = respace(base, space_timesteps(1000, "25"));
  for (const int y : {0, 1}) {
    const ModelFn uncond = respaced_model(unconditional_eps(base), r.timestep_map);
    const ModelFn cond = respaced_model(conditional_eps(base, y), r.timestep_map);
    const GuidanceFn grad = respaced_model(classifier_gradient(base, y, 1.0), r.timestep_map);
    for (const Sampler sampler : {Sampler::ddim, Sampler::dpm_solver_2m}) {
      const at::Tensor guided =
          sample_loop(sampler, r.diffusion, uncond, kShape, noise(), float64(grad));
      const at::Tensor exact = sample_loop(sampler, r.diffusion, cond, kShape, noise(), float64());
      EXPECT_TRUE(at::allclose(guided, exact, 1e-9, 1e-9))
          << sampler_name(sampler) << " class " << y << ": max difference "
          << (guided - exact).abs().max().item<double>();
      // And the class is drawn: every sample near mu_y.
      EXPECT_NEAR(guided.mean().item<double>(), kMu[y], 0.02) << sampler_name(sampler);
    }
  }
}

// DDPM shifts its mean by Sigma * gradient, a first-order step: at every step of T = 1000 the
// samples follow the class, and without guidance they split between the classes.
TEST(ClassifierGuidance, DrawsTheChosenClassWithDdpmAndBothWithout) {
  const GaussianDiffusion base = make_gaussian_diffusion(
      BetaSchedule::cosine, 1000, ModelMeanType::epsilon, ModelVarType::fixed_large);
  const at::Tensor unguided =
      p_sample_loop(base, unconditional_eps(base), kShape, noise(), float64());
  const double share_of_1 = (unguided.mean({1, 2, 3}) > 0).to(at::kDouble).mean().item<double>();
  EXPECT_NEAR(share_of_1, 0.5, 0.1);
  for (const int y : {0, 1}) {
    const at::Tensor guided = p_sample_loop(base, unconditional_eps(base), kShape, noise(),
                                            float64(classifier_gradient(base, y, 1.0)));
    const at::Tensor per_sample = guided.mean({1, 2, 3});
    const double right_side = ((per_sample > 0) == (y == 1)).to(at::kDouble).mean().item<double>();
    EXPECT_GE(right_side, 0.99) << "class " << y;
    EXPECT_NEAR(per_sample.mean().item<double>(), kMu[y], 0.03) << "class " << y;
    // The class's spread, not a collapse onto its mean.
    EXPECT_NEAR(guided.std().item<double>(), kS, 0.03) << "class " << y;
  }
}

// Where abar_t is near 0, the x_0 shift of a score-form step, (1 - abar) / sqrt(abar) * gradient,
// is huge (2e4 times the gradient at the cosine schedule's t = T-1): with clip_denoised the guided
// x_0 prediction is clamped like the model's, so DDIM and DPM-Solver++ stay in [-1, 1] however
// strong the gradient; unclamped (guided-diffusion's rule) the first step throws the samples far
// out, which is what a cosine-schedule demo model showed before the clamp.
TEST(ClassifierGuidance, GuidedPredictionsAreClampedLikeTheModelsWithClipDenoised) {
  const GaussianDiffusion base = make_gaussian_diffusion(
      BetaSchedule::cosine, 1000, ModelMeanType::epsilon, ModelVarType::fixed_small);
  const RespacedDiffusion r = respace(base, space_timesteps(1000, "20"));
  const ModelFn uncond = respaced_model(unconditional_eps(base), r.timestep_map);
  const GuidanceFn strong = [](const at::Tensor& x, const at::Tensor&) {
    return at::full_like(x, 0.05);
  };
  for (const Sampler sampler : {Sampler::ddim, Sampler::dpm_solver_2m}) {
    const at::Tensor unguided =
        sample_loop(sampler, r.diffusion, uncond, kShape, noise(), float64());
    const at::Tensor in_range =
        sample_loop(sampler, r.diffusion, uncond, kShape, noise(), float64(strong));
    EXPECT_LE(in_range.abs().max().item<double>(), 1.0) << sampler_name(sampler);
    EXPECT_GT(in_range.mean().item<double>(), unguided.mean().item<double>() + 0.05)
        << sampler_name(sampler) << ": pushed up";
    SampleOptions unclamped = float64(strong);
    unclamped.clip_denoised = false;
    const at::Tensor thrown = sample_loop(sampler, r.diffusion, uncond, kShape, noise(), unclamped);
    EXPECT_GT(thrown.abs().max().item<double>(), 3.0) << sampler_name(sampler);
  }
}

// Scale 0 adds nothing: the samples are the unguided ones, bit for bit.
TEST(ClassifierGuidance, ScaleZeroIsNoGuidance) {
  const GaussianDiffusion base = make_gaussian_diffusion(
      BetaSchedule::cosine, 1000, ModelMeanType::epsilon, ModelVarType::fixed_small);
  const RespacedDiffusion r = respace(base, space_timesteps(1000, "10"));
  const ModelFn uncond = respaced_model(unconditional_eps(base), r.timestep_map);
  const GuidanceFn zero = respaced_model(classifier_gradient(base, 1, 0.0), r.timestep_map);
  for (const Sampler sampler : {Sampler::ddpm, Sampler::ddim, Sampler::dpm_solver_2m})
    EXPECT_TRUE(at::equal(sample_loop(sampler, r.diffusion, uncond, kShape, noise(), float64(zero)),
                          sample_loop(sampler, r.diffusion, uncond, kShape, noise(), float64())))
        << sampler_name(sampler);
}

}  // namespace
