// The objective family: the v target, the weightings of the simple term, the sigmoid schedule and
// zero terminal SNR. Expected values are written down from
// the formulas (closed forms at known SNRs, the scalar reference of reference.hpp).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "diffusion/bound.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "diffusion/sampling.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "diffusion/weighting.hpp"
#include "expect_reference.hpp"
#include "reference.hpp"

namespace dd = difftrain::diffusion;

namespace {

using dd::ModelMeanType;
using dd::SimpleWeighting;

at::Generator generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

const auto f64 = at::TensorOptions().dtype(at::kDouble);

// A diffusion whose alphas_cumprod are exactly `abar` (betas_t = 1 - abar_t / abar_{t-1}).
dd::GaussianDiffusion from_alphas_cumprod(const std::vector<double>& abar, ModelMeanType mean,
                                          dd::ModelVarType var = dd::ModelVarType::fixed_small) {
  std::vector<double> betas;
  double prev = 1.0;
  for (double a : abar) {
    betas.push_back(1.0 - a / prev);
    prev = a;
  }
  return dd::make_gaussian_diffusion(at::tensor(betas, f64), mean, var);
}

dd::GaussianDiffusion make(dd::BetaSchedule schedule, long T, bool zero_terminal_snr,
                           ModelMeanType mean, dd::ModelVarType var) {
  at::Tensor betas = dd::get_named_beta_schedule(schedule, T);
  if (zero_terminal_snr) betas = dd::rescale_zero_terminal_snr(betas);
  return dd::make_gaussian_diffusion(betas, mean, var);
}

struct Batch {
  at::Tensor x_start, noise, t, model_output;
};

// 8-bit data in [-1, 1], timesteps 0, 1, T-2, T-1, T/2, 3.
Batch make_batch(long T, int64_t C, int64_t out_c, uint64_t seed) {
  auto gen = generator(seed);
  Batch b;
  b.t = torch::tensor({0L, 1L, T - 2, T - 1, T / 2, 3L}, torch::kLong);
  const int64_t N = b.t.size(0);
  b.x_start = at::randint(0, 256, {N, C, 3, 5}, gen, f64) / 127.5 - 1.0;
  b.noise = at::randn({N, C, 3, 5}, gen, f64);
  b.model_output = 0.5 * at::randn({N, out_c, 3, 5}, gen, f64);
  return b;
}

double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}

// --- The v target -------------------------------------------------------------------------

TEST(VTarget, RoundTripsToEpsAndStartX) {
  const auto d =
      make(dd::BetaSchedule::cosine, 40, false, ModelMeanType::v, dd::ModelVarType::fixed_small);
  const Batch b = make_batch(40, 2, 2, 3);
  const at::Tensor x_t = dd::q_sample(d, b.x_start, b.t, b.noise);
  const at::Tensor v = dd::v_target(d, b.x_start, b.t, b.noise);
  EXPECT_TRUE(at::allclose(dd::predict_xstart_from_v(d, x_t, b.t, v), b.x_start, 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(dd::predict_eps_from_v(d, x_t, b.t, v), b.noise, 1e-12, 1e-12));
  // One element by hand: v = sqrt(abar) eps - sqrt(1 - abar) x0.
  const long t = b.t[2].item<long>();
  const double abar = d.alphas_cumprod[t].item<double>();
  const double x0 = b.x_start[2][1][2][4].item<double>(), eps = b.noise[2][1][2][4].item<double>();
  EXPECT_NEAR(v[2][1][2][4].item<double>(), std::sqrt(abar) * eps - std::sqrt(1 - abar) * x0,
              1e-14);
}

TEST(VTarget, ClosedFormAtAKnownAlphaBar) {
  // abar = 0.64: sqrt(abar) = 0.8, sqrt(1 - abar) = 0.6.
  const auto d = from_alphas_cumprod({0.9, 0.64}, ModelMeanType::v);
  const at::Tensor t = torch::tensor({1L});
  const at::Tensor x0 = torch::tensor({0.5}, f64).view({1, 1, 1, 1});
  const at::Tensor eps = torch::tensor({-1.0}, f64).view({1, 1, 1, 1});
  EXPECT_NEAR(dd::v_target(d, x0, t, eps).item<double>(), 0.8 * -1.0 - 0.6 * 0.5, 1e-15);
  const at::Tensor x_t = dd::q_sample(d, x0, t, eps);  // 0.8 * 0.5 + 0.6 * -1 = -0.2
  EXPECT_NEAR(x_t.item<double>(), -0.2, 1e-15);
  // eps from x0 (the DDIM and eval path): (x_t - 0.8 x0) / 0.6.
  EXPECT_NEAR(dd::predict_eps_from_xstart(d, x_t, t, x0).item<double>(), -1.0, 1e-14);
}

// --- Weightings at known SNRs ---------------------------------------------------------------

// abar = 0.9, 0.5, 0.2 (SNR 9, 1, 0.25), and 0 (SNR 0) for the zero-terminal-SNR tables.
const std::vector<double> kAbar{0.9, 0.5, 0.2};
const std::vector<double> kAbarZero{0.9, 0.5, 0.2, 0.0};

std::vector<double> weights(ModelMeanType mean, SimpleWeighting w, bool zero_terminal,
                            double gamma = 5.0, double bias = 0.0) {
  const auto d = from_alphas_cumprod(zero_terminal ? kAbarZero : kAbar, mean);
  dd::LossSpec spec;
  spec.weighting = w;
  spec.min_snr_gamma = gamma;
  spec.sigmoid_bias = bias;
  const at::Tensor table = dd::simple_term_weights(d, spec);
  return {table.data_ptr<double>(), table.data_ptr<double>() + table.numel()};
}

void expect_weights(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 1e-12 * (1 + std::abs(want[i]))) << "t = " << i;
}

TEST(Weighting, SnrTable) {
  const auto d = from_alphas_cumprod(kAbarZero, ModelMeanType::v);
  const at::Tensor s = dd::snr(d);
  expect_weights({s.data_ptr<double>(), s.data_ptr<double>() + 4}, {9.0, 1.0, 0.25, 0.0});
  EXPECT_TRUE(dd::has_zero_terminal_snr(d));
  EXPECT_FALSE(dd::has_zero_terminal_snr(from_alphas_cumprod(kAbar, ModelMeanType::v)));
}

TEST(Weighting, MinSnrAtKnownSnrs) {
  // Hang et al. 2023: min(SNR, gamma) on the x0 error; / SNR for eps, / (SNR + 1) for v.
  expect_weights(weights(ModelMeanType::epsilon, SimpleWeighting::min_snr, false),
                 {5.0 / 9.0, 1.0, 1.0});
  expect_weights(weights(ModelMeanType::start_x, SimpleWeighting::min_snr, true),
                 {5.0, 1.0, 0.25, 0.0});
  expect_weights(weights(ModelMeanType::v, SimpleWeighting::min_snr, true),
                 {5.0 / 10.0, 1.0 / 2.0, 0.25 / 1.25, 0.0});
  // gamma = 0.5 truncates SNR 1 and 9 too.
  expect_weights(weights(ModelMeanType::epsilon, SimpleWeighting::min_snr, false, 0.5),
                 {0.5 / 9.0, 0.5, 1.0});
  expect_weights(weights(ModelMeanType::v, SimpleWeighting::min_snr, false, 0.5),
                 {0.5 / 10.0, 0.5 / 2.0, 0.25 / 1.25});
}

TEST(Weighting, SnrIsTheEpsilonLossForEveryTarget) {
  expect_weights(weights(ModelMeanType::epsilon, SimpleWeighting::snr, false), {1.0, 1.0, 1.0});
  expect_weights(weights(ModelMeanType::start_x, SimpleWeighting::snr, true),
                 {9.0, 1.0, 0.25, 0.0});
  expect_weights(weights(ModelMeanType::v, SimpleWeighting::snr, true),
                 {9.0 / 10.0, 1.0 / 2.0, 0.25 / 1.25, 0.0});
}

TEST(Weighting, SigmoidAtKnownSnrs) {
  // Kingma & Gao 2023: sigmoid(b - log SNR) = 1 / (1 + SNR e^-b) on the eps error.
  const double b = 1.0, e = std::exp(-b);
  expect_weights(weights(ModelMeanType::epsilon, SimpleWeighting::sigmoid, false, 5.0, b),
                 {1 / (1 + 9 * e), 1 / (1 + e), 1 / (1 + 0.25 * e)});
  EXPECT_NEAR(1 / (1 + 9 * e), sigmoid(b - std::log(9.0)), 1e-15);
  expect_weights(weights(ModelMeanType::start_x, SimpleWeighting::sigmoid, true, 5.0, b),
                 {9 / (1 + 9 * e), 1 / (1 + e), 0.25 / (1 + 0.25 * e), 0.0});
  expect_weights(weights(ModelMeanType::v, SimpleWeighting::sigmoid, true, 5.0, b),
                 {9 / (10 * (1 + 9 * e)), 1 / (2 * (1 + e)), 0.25 / (1.25 * (1 + 0.25 * e)), 0.0});
}

TEST(Weighting, NoneIsOneAndPreviousXHasOnlyNone) {
  expect_weights(weights(ModelMeanType::previous_x, SimpleWeighting::none, true),
                 {1.0, 1.0, 1.0, 1.0});
  for (auto w : {SimpleWeighting::min_snr, SimpleWeighting::snr, SimpleWeighting::sigmoid})
    EXPECT_THROW(weights(ModelMeanType::previous_x, w, false), std::invalid_argument);
}

TEST(Weighting, UndefinedObjectivesAreRejected) {
  EXPECT_THROW(dd::check_objective(ModelMeanType::epsilon, SimpleWeighting::none, true),
               std::invalid_argument);
  EXPECT_THROW(dd::check_objective(ModelMeanType::previous_x, SimpleWeighting::min_snr, false),
               std::invalid_argument);
  EXPECT_THROW(dd::check_objective(ModelMeanType::v, SimpleWeighting::min_snr, false, 0.0),
               std::invalid_argument);
  for (auto m : {ModelMeanType::start_x, ModelMeanType::previous_x, ModelMeanType::v})
    EXPECT_NO_THROW(dd::check_objective(m, SimpleWeighting::none, true));
  for (auto w : {SimpleWeighting::min_snr, SimpleWeighting::snr, SimpleWeighting::sigmoid})
    EXPECT_NO_THROW(dd::check_objective(ModelMeanType::v, w, true));
}

// --- Training terms with a weighting ----------------------------------------------------------

using WeightedCombo = std::tuple<ModelMeanType, SimpleWeighting>;
class WeightedTerms : public ::testing::TestWithParam<WeightedCombo> {};

// mse is the unweighted error against the target, weighted_mse = w(t) mse, the VLB term is the
// weighting-free one, loss = weighted_mse + vb.
TEST_P(WeightedTerms, WeightOnlyTheSimpleTerm) {
  const auto [mean, weighting] = GetParam();
  const long T = 30;
  const auto d = make(dd::BetaSchedule::cosine, T, false, mean, dd::ModelVarType::learned_range);
  const Batch b = make_batch(T, 2, 4, 9);
  const at::Tensor x_t = dd::q_sample(d, b.x_start, b.t, b.noise);
  dd::LossSpec spec = dd::hybrid_loss_spec(0.001, T);
  const auto plain = dd::training_terms(d, spec, b.model_output, b.x_start, x_t, b.t, b.noise);
  spec.weighting = weighting;
  spec.min_snr_gamma = 2.0;
  spec.sigmoid_bias = -1.0;
  const auto terms = dd::training_terms(d, spec, b.model_output, b.x_start, x_t, b.t, b.noise);
  const at::Tensor w = dd::simple_term_weights(d, spec).index_select(0, b.t);
  EXPECT_TRUE(at::allclose(terms.mse, plain.mse, 0, 0));
  EXPECT_TRUE(at::allclose(terms.vb, plain.vb, 0, 0));
  EXPECT_TRUE(at::allclose(terms.weighted_mse, w * terms.mse, 1e-14, 0));
  EXPECT_TRUE(at::allclose(terms.loss, terms.weighted_mse + terms.vb, 1e-14, 0));
  EXPECT_TRUE(at::allclose(plain.weighted_mse, plain.mse, 0, 0));
  // The mse against the target written from its formula.
  const at::Tensor abar = d.alphas_cumprod.index_select(0, b.t).view({-1, 1, 1, 1});
  const at::Tensor target = mean == ModelMeanType::epsilon ? b.noise
                            : mean == ModelMeanType::start_x
                                ? b.x_start
                                : at::sqrt(abar) * b.noise - at::sqrt(1 - abar) * b.x_start;
  const at::Tensor want = (b.model_output.slice(1, 0, 2) - target).square().mean({1, 2, 3});
  EXPECT_TRUE(at::allclose(terms.mse, want, 1e-12, 1e-14));
}

INSTANTIATE_TEST_SUITE_P(
    Objective, WeightedTerms,
    ::testing::Combine(::testing::Values(ModelMeanType::epsilon, ModelMeanType::start_x,
                                         ModelMeanType::v),
                       ::testing::Values(SimpleWeighting::none, SimpleWeighting::min_snr,
                                         SimpleWeighting::snr, SimpleWeighting::sigmoid)),
    [](const auto& info) {
      return dd::to_string(std::get<0>(info.param)) + "_" + dd::to_string(std::get<1>(info.param));
    });

// The new targets and schedules (v, sigmoid, zero terminal SNR) against the scalar reference,
// every variance and loss type.
using RefCombo = std::tuple<dd::BetaSchedule, bool, ModelMeanType, dd::ModelVarType, dd::LossType>;
class TargetAndSchedule : public ::testing::TestWithParam<RefCombo> {};

TEST_P(TargetAndSchedule, MatchScalarReference) {
  const auto [schedule, zero_terminal, mean, var, loss_type] = GetParam();
  const long T = schedule == dd::BetaSchedule::linear ? 100 : 30;
  const auto d = make(schedule, T, zero_terminal, mean, var);
  const auto ref = dd::reference::tables(schedule, T, zero_terminal);
  const int64_t C = 2;
  const Batch b = make_batch(T, C, dd::is_learned(var) ? 2 * C : C, 7);
  const auto spec = dd::loss_spec(loss_type, var, T);
  const auto terms = dd::training_terms(d, spec, b.model_output, b.x_start,
                                        dd::q_sample(d, b.x_start, b.t, b.noise), b.t, b.noise);
  dd::reference::expect_terms_match_reference(terms, ref, mean, var, loss_type, b.x_start, b.noise,
                                              b.t, b.model_output);
}

// Every schedule x zero terminal SNR x target x variance, for an mse and a VLB loss, except the
// undefined epsilon target at a zero terminal SNR.
std::vector<RefCombo> new_objectives() {
  std::vector<RefCombo> combos;
  for (auto schedule :
       {dd::BetaSchedule::linear, dd::BetaSchedule::cosine, dd::BetaSchedule::sigmoid})
    for (bool zero_terminal : {false, true})
      for (auto mean : {ModelMeanType::epsilon, ModelMeanType::start_x, ModelMeanType::previous_x,
                        ModelMeanType::v})
        for (auto var : {dd::ModelVarType::fixed_small, dd::ModelVarType::fixed_large,
                         dd::ModelVarType::learned, dd::ModelVarType::learned_range})
          for (auto loss : {dd::LossType::mse, dd::LossType::rescaled_kl})
            if (!(mean == ModelMeanType::epsilon && zero_terminal))
              combos.emplace_back(schedule, zero_terminal, mean, var, loss);
  return combos;
}

INSTANTIATE_TEST_SUITE_P(Objective, TargetAndSchedule, ::testing::ValuesIn(new_objectives()),
                         [](const auto& info) {
                           return dd::to_string(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_zero_terminal_snr_" : "_") +
                                  dd::to_string(std::get<2>(info.param)) + "_" +
                                  dd::to_string(std::get<3>(info.param)) + "_" +
                                  dd::to_string(std::get<4>(info.param));
                         });

// --- The VLB term is target-independent --------------------------------------------------------

// Whatever the target, the same x0 prediction gives the same posterior mean, hence the same L_t;
// with the hybrid loss the VLB term never reaches the mean head.
TEST(Vlb, SameValueWhicheverTargetGivesTheMean) {
  for (const bool zero_terminal : {false, true}) {
    SCOPED_TRACE(zero_terminal ? "zero terminal SNR" : "cosine");
    const long T = 30;
    const auto base = make(dd::BetaSchedule::cosine, T, zero_terminal, ModelMeanType::start_x,
                           dd::ModelVarType::learned_range);
    const Batch b = make_batch(T, 2, 4, 13);
    const at::Tensor x_t = dd::q_sample(base, b.x_start, b.t, b.noise);
    const at::Tensor pred_x0 = b.model_output.slice(1, 0, 2), var_head = b.model_output.slice(1, 2);
    const at::Tensor abar = base.alphas_cumprod.index_select(0, b.t).view({-1, 1, 1, 1});
    // The head of every target that implies pred_x0.
    const at::Tensor eps_head = (x_t - at::sqrt(abar) * pred_x0) / at::sqrt(1 - abar);
    const at::Tensor v_head = at::sqrt(abar) * eps_head - at::sqrt(1 - abar) * pred_x0;
    const at::Tensor mean_head = dd::q_posterior_mean_variance(base, pred_x0, x_t, b.t).mean;
    std::vector<std::pair<ModelMeanType, at::Tensor>> heads{{ModelMeanType::start_x, pred_x0},
                                                            {ModelMeanType::previous_x, mean_head},
                                                            {ModelMeanType::v, v_head}};
    if (!zero_terminal) heads.emplace_back(ModelMeanType::epsilon, eps_head);
    at::Tensor first;
    for (const auto& [mean, head] : heads) {
      SCOPED_TRACE(dd::to_string(mean));
      dd::GaussianDiffusion d = base;
      d.model_mean_type = mean;
      const at::Tensor out = at::cat({head, var_head}, 1).requires_grad_(true);
      const auto terms =
          dd::training_terms(d, dd::hybrid_loss_spec(0.001, T), out, b.x_start, x_t, b.t, b.noise);
      ASSERT_TRUE(at::isfinite(terms.vb_bits).all().item<bool>());
      if (!first.defined()) first = terms.vb_bits.detach();
      EXPECT_TRUE(at::allclose(terms.vb_bits, first, 1e-9, 1e-12))
          << terms.vb_bits << " vs " << first;
      terms.vb.sum().backward();
      EXPECT_EQ(out.grad().slice(1, 0, 2).abs().max().item<double>(), 0.0);
      EXPECT_GT(out.grad().slice(1, 2).abs().max().item<double>(), 0.0);
    }
  }
}

// --- Schedules ---------------------------------------------------------------------------------

TEST(SigmoidSchedule, AlphasCumprodFollowChen2023) {
  const long T = 20;
  const auto d =
      make(dd::BetaSchedule::sigmoid, T, false, ModelMeanType::v, dd::ModelVarType::fixed_small);
  // abar(u) = (sigmoid(3) - sigmoid(6u - 3)) / (sigmoid(3) - sigmoid(-3)), abar(0) = 1; the
  // product of the betas gives abar((t+1)/T) until the 0.999 cap at the last step.
  for (long t = 0; t < T - 1; ++t) {
    const double u = double(t + 1) / T;
    const double want = (sigmoid(3) - sigmoid(6 * u - 3)) / (sigmoid(3) - sigmoid(-3));
    EXPECT_NEAR(d.alphas_cumprod[t].item<double>(), want, 1e-12) << "t = " << t;
  }
  EXPECT_NEAR(d.betas[T - 1].item<double>(), 0.999, 1e-15);
  EXPECT_THROW(dd::get_named_beta_schedule(dd::BetaSchedule::sigmoid, 1), std::invalid_argument);
}

TEST(ZeroTerminalSnr, RescaleFollowsLin2024AndTablesStayFinite) {
  for (auto schedule :
       {dd::BetaSchedule::linear, dd::BetaSchedule::cosine, dd::BetaSchedule::sigmoid}) {
    SCOPED_TRACE(dd::to_string(schedule));
    const long T = schedule == dd::BetaSchedule::linear ? 50 : 30;
    const at::Tensor betas = dd::get_named_beta_schedule(schedule, T);
    const at::Tensor s = at::sqrt(at::cumprod(1 - betas, 0));
    const auto d = make(schedule, T, true, ModelMeanType::v, dd::ModelVarType::learned_range);
    // sqrt(abar') = (sqrt(abar) - sqrt(abar_last)) * sqrt(abar_0) / (sqrt(abar_0) -
    // sqrt(abar_last))
    const double s0 = s[0].item<double>(), sl = s[T - 1].item<double>();
    EXPECT_TRUE(at::allclose(d.sqrt_alphas_cumprod, (s - sl) * s0 / (s0 - sl), 1e-12, 1e-15));
    EXPECT_EQ(d.alphas_cumprod[T - 1].item<double>(), 0.0);
    EXPECT_EQ(d.betas[T - 1].item<double>(), 1.0);
    EXPECT_NEAR(d.alphas_cumprod[0].item<double>(), s0 * s0, 1e-15);
    for (const at::Tensor* table :
         {&d.posterior_variance, &d.posterior_log_variance_clipped, &d.posterior_mean_coef1,
          &d.posterior_mean_coef2, &d.log_one_minus_alphas_cumprod, &d.sqrt_alphas_cumprod,
          &d.sqrt_one_minus_alphas_cumprod})
      EXPECT_TRUE(at::isfinite(*table).all().item<bool>());
    // L_T = KL(N(0, 1) || N(0, 1)) = 0 exactly.
    const at::Tensor x0 = at::rand({3, 1, 2, 2}, generator(1), f64) * 2 - 1;
    EXPECT_EQ(dd::prior_bpd(d, x0).abs().max().item<double>(), 0.0);
  }
}

// v and start_x sample and evaluate fine at a zero terminal SNR (t = T-1 divides by nothing).
TEST(ZeroTerminalSnr, VAndStartXSampleAndEvaluateFinitely) {
  const long T = 20;
  for (auto mean : {ModelMeanType::v, ModelMeanType::start_x}) {
    for (auto var : {dd::ModelVarType::fixed_small, dd::ModelVarType::learned_range}) {
      SCOPED_TRACE(dd::to_string(mean) + " " + dd::to_string(var));
      const auto d = make(dd::BetaSchedule::cosine, T, true, mean, var);
      // A stand-in network: a smooth function of x_t and t, with a variance head.
      const dd::ModelFn model = [&](const at::Tensor& x, const at::Tensor& t) {
        const at::Tensor tt = (t.to(x.scalar_type()) / T).view({-1, 1, 1, 1});
        const at::Tensor head = 0.7 * x * (1 - tt) - 0.2 * tt;
        return dd::is_learned(var) ? at::cat({head, at::tanh(x)}, 1) : head;
      };
      dd::SampleOptions o;
      o.dtype = at::kDouble;
      const at::Tensor ddpm =
          dd::p_sample_loop(d, model, {3, 1, 4, 4}, dd::generator_noise(generator(5)), o);
      EXPECT_TRUE(at::isfinite(ddpm).all().item<bool>());
      EXPECT_LE(ddpm.abs().max().item<double>(), 1.0 + 1e-12);  // the last step is a clamped x0
      o.eta = 0.5;
      const at::Tensor ddim =
          dd::ddim_sample_loop(d, model, {3, 1, 4, 4}, dd::generator_noise(generator(6)), o);
      EXPECT_TRUE(at::isfinite(ddim).all().item<bool>());
      const at::Tensor x0 = at::rand({2, 1, 4, 4}, generator(2), f64) * 2 - 1;
      auto noise_gen = generator(3);
      const auto bound = dd::calc_bpd_loop(
          d, model, x0, true, [&](long) { return at::randn(x0.sizes(), noise_gen, f64); });
      EXPECT_TRUE(at::isfinite(bound.total_bpd).all().item<bool>());
      EXPECT_TRUE(at::isfinite(bound.mse).all().item<bool>());
      EXPECT_EQ(bound.prior_bpd.abs().max().item<double>(), 0.0);
    }
  }
}

}  // namespace
