// Per-sample training terms: every schedule x mean type x variance type x loss type against the
// scalar reference, the stop-gradient of the hybrid loss, and invariants from the formulas.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <tuple>

#include "diffusion/gaussian_diffusion.hpp"
#include "expect_reference.hpp"
#include "reference.hpp"

namespace dd = difftrain::diffusion;

namespace {

struct Batch {
  at::Tensor x_start, noise, t, model_output;
};

// 8-bit data in [-1, 1] with both edge values present, and timesteps 0, 1, T-2, T-1.
Batch make_batch(const dd::GaussianDiffusion& d, int64_t C, int64_t H, int64_t W, uint64_t seed,
                 at::ScalarType dtype = at::kDouble) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const long T = d.num_timesteps;
  Batch b;
  b.t = torch::tensor({0L, 1L, T - 2, T - 1, T / 2, 3L}, torch::kLong);
  const int64_t N = b.t.size(0);
  auto k = at::randint(0, 256, {N, C, H, W}, gen, at::TensorOptions().dtype(at::kDouble));
  k.select(1, 0).select(1, 0).select(1, 0).fill_(0);
  k.select(1, C - 1).select(1, H - 1).select(1, W - 1).fill_(255);
  b.x_start = (k / 127.5 - 1.0).to(dtype);
  b.noise = at::randn({N, C, H, W}, gen, at::TensorOptions().dtype(dtype));
  const int64_t out_c = dd::is_learned(d.model_var_type) ? 2 * C : C;
  b.model_output = 0.5 * at::randn({N, out_c, H, W}, gen, at::TensorOptions().dtype(dtype));
  return b;
}

at::Tensor x_t_of(const dd::GaussianDiffusion& d, const Batch& b) {
  return dd::q_sample(d, b.x_start, b.t, b.noise);
}

using Combo = std::tuple<dd::BetaSchedule, dd::ModelMeanType, dd::ModelVarType, dd::LossType>;

class EveryCombination : public ::testing::TestWithParam<Combo> {};

TEST_P(EveryCombination, MatchesScalarReference) {
  const auto [schedule, mean_type, var_type, loss_type] = GetParam();
  const long T = schedule == dd::BetaSchedule::linear ? 100 : 30;
  const auto d = dd::make_gaussian_diffusion(schedule, T, mean_type, var_type);
  const auto ref = dd::reference::tables(schedule, T);
  const int64_t C = 2, H = 3, W = 5;
  const Batch b = make_batch(d, C, H, W, 7);
  const auto spec = dd::loss_spec(loss_type, var_type, T);
  const auto terms =
      dd::training_terms(d, spec, b.model_output, b.x_start, x_t_of(d, b), b.t, b.noise);
  dd::reference::expect_terms_match_reference(terms, ref, mean_type, var_type, loss_type, b.x_start,
                                              b.noise, b.t, b.model_output);
}

INSTANTIATE_TEST_SUITE_P(
    Diffusion, EveryCombination,
    ::testing::Combine(::testing::Values(dd::BetaSchedule::linear, dd::BetaSchedule::cosine),
                       ::testing::Values(dd::ModelMeanType::epsilon, dd::ModelMeanType::start_x,
                                         dd::ModelMeanType::previous_x),
                       ::testing::Values(dd::ModelVarType::fixed_small,
                                         dd::ModelVarType::fixed_large, dd::ModelVarType::learned,
                                         dd::ModelVarType::learned_range),
                       ::testing::Values(dd::LossType::mse, dd::LossType::rescaled_mse,
                                         dd::LossType::kl, dd::LossType::rescaled_kl)),
    [](const auto& info) {
      return dd::to_string(std::get<0>(info.param)) + "_" + dd::to_string(std::get<1>(info.param)) +
             "_" + dd::to_string(std::get<2>(info.param)) + "_" +
             dd::to_string(std::get<3>(info.param));
    });

// Gradients of the VLB term with respect to the two heads of the network output.
std::pair<double, double> vb_grad_norms(const dd::LossSpec& spec) {
  const auto d = dd::make_gaussian_diffusion(
      dd::BetaSchedule::linear, 1000, dd::ModelMeanType::epsilon, dd::ModelVarType::learned_range);
  Batch b = make_batch(d, 3, 4, 4, 11);
  const at::Tensor out = b.model_output.clone().requires_grad_(true);
  const auto terms = dd::training_terms(d, spec, out, b.x_start, x_t_of(d, b), b.t, b.noise);
  terms.vb.sum().backward();
  const at::Tensor g = out.grad();
  return {g.slice(1, 0, 3).norm().item<double>(), g.slice(1, 3, 6).norm().item<double>()};
}

TEST(TrainingTerms, HybridVbTrainsOnlyTheVarianceHead) {
  const auto [mean_grad, var_grad] = vb_grad_norms(dd::hybrid_loss_spec(0.001, 1000));
  EXPECT_EQ(mean_grad, 0.0);
  EXPECT_GT(var_grad, 1e-6);
}

TEST(TrainingTerms, PureVlbTrainsBothHeads) {
  const auto [mean_grad, var_grad] =
      vb_grad_norms(dd::loss_spec(dd::LossType::kl, dd::ModelVarType::learned_range, 1000));
  EXPECT_GT(mean_grad, 1e-6);
  EXPECT_GT(var_grad, 1e-6);
}

TEST(TrainingTerms, MseDoesNotTouchTheVarianceHead) {
  const auto d = dd::make_gaussian_diffusion(dd::BetaSchedule::cosine, 100,
                                             dd::ModelMeanType::epsilon, dd::ModelVarType::learned);
  Batch b = make_batch(d, 1, 4, 4, 3);
  const at::Tensor out = b.model_output.clone().requires_grad_(true);
  const auto terms = dd::training_terms(d, dd::hybrid_loss_spec(0.001, 100), out, b.x_start,
                                        x_t_of(d, b), b.t, b.noise);
  terms.mse.sum().backward();
  EXPECT_EQ(out.grad().slice(1, 1, 2).norm().item<double>(), 0.0);
  EXPECT_GT(out.grad().slice(1, 0, 1).norm().item<double>(), 0.0);
}

TEST(TrainingTerms, HybridWeightReproducesGoldenLossTypes) {
  const long T = 4000;
  EXPECT_DOUBLE_EQ(
      dd::hybrid_loss_spec(0.001, T).vb_scale,
      dd::loss_spec(dd::LossType::rescaled_mse, dd::ModelVarType::learned, T).vb_scale);
  EXPECT_DOUBLE_EQ(dd::hybrid_loss_spec(1.0 / T, T).vb_scale,
                   dd::loss_spec(dd::LossType::mse, dd::ModelVarType::learned, T).vb_scale);
}

// A head that encodes the true posterior mean with the posterior variance gives KL = 0 for t >= 1.
TEST(TrainingTerms, ExactPosteriorGivesZeroKl) {
  for (auto mean_type :
       {dd::ModelMeanType::epsilon, dd::ModelMeanType::start_x, dd::ModelMeanType::previous_x}) {
    const auto d = dd::make_gaussian_diffusion(dd::BetaSchedule::cosine, 50, mean_type,
                                               dd::ModelVarType::fixed_small);
    const Batch b = make_batch(d, 3, 2, 2, 5);
    const at::Tensor x_t = x_t_of(d, b);
    const at::Tensor head = mean_type == dd::ModelMeanType::epsilon ? b.noise
                            : mean_type == dd::ModelMeanType::start_x
                                ? b.x_start
                                : dd::q_posterior_mean_variance(d, b.x_start, x_t, b.t).mean;
    const auto terms = dd::training_terms(d, dd::loss_spec(dd::LossType::kl, d.model_var_type, 50),
                                          head, b.x_start, x_t, b.t, b.noise);
    for (int64_t n = 0; n < b.t.size(0); ++n) {
      if (b.t[n].item<long>() >= 1) {
        EXPECT_NEAR(terms.vb[n].item<double>(), 0.0, 1e-10);
      }
    }
    // ... and its mse against the target of its own mean type is zero.
    const auto mse = dd::training_terms(d, dd::loss_spec(dd::LossType::mse, d.model_var_type, 50),
                                        head, b.x_start, x_t, b.t, b.noise)
                         .mse;
    EXPECT_LT(mse.abs().max().item<double>(), 1e-20);
  }
}

TEST(ModelVariance, FixedAndLearnedRangeAgainstTables) {
  const long T = 100;
  const int64_t C = 1;
  auto var_of = [&](dd::ModelVarType vt, const at::Tensor& v) {
    const auto d =
        dd::make_gaussian_diffusion(dd::BetaSchedule::linear, T, dd::ModelMeanType::epsilon, vt);
    const Batch b = make_batch(d, C, 2, 2, 1);
    const at::Tensor out = dd::is_learned(vt)
                               ? at::cat({b.model_output.slice(1, 0, C), v.expand_as(b.x_start)}, 1)
                               : b.model_output;
    return std::make_pair(
        dd::p_mean_variance(d, out, x_t_of(d, b), b.t, false).log_variance.amax({1, 2, 3}),
        std::make_pair(d, b.t));
  };
  const auto [small, dt] = var_of(dd::ModelVarType::fixed_small, {});
  const auto& [d, t] = dt;
  EXPECT_TRUE(at::allclose(small, d.posterior_log_variance_clipped.index_select(0, t)));
  const auto large = var_of(dd::ModelVarType::fixed_large, {}).first;
  const at::Tensor want_large =
      at::where(t == 0, at::log(d.posterior_variance[1]), at::log(d.betas.index_select(0, t)));
  EXPECT_TRUE(at::allclose(large, want_large));
  // learned_range: v = -1 gives the small variance, v = +1 gives beta_t (at every t).
  const auto lo = var_of(dd::ModelVarType::learned_range, at::full({1}, -1.0, at::kDouble)).first;
  const auto hi = var_of(dd::ModelVarType::learned_range, at::full({1}, 1.0, at::kDouble)).first;
  EXPECT_TRUE(at::allclose(lo, small));
  EXPECT_TRUE(at::allclose(hi, at::log(d.betas.index_select(0, t))));
  // learned: the head is the log-variance itself.
  const auto raw = var_of(dd::ModelVarType::learned, at::full({1}, -3.25, at::kDouble)).first;
  EXPECT_TRUE(at::allclose(raw, at::full_like(raw, -3.25)));
}

TEST(TrainingTerms, Float32AgreesWithFloat64) {
  const auto d = dd::make_gaussian_diffusion(
      dd::BetaSchedule::linear, 1000, dd::ModelMeanType::epsilon, dd::ModelVarType::learned_range);
  const Batch b64 = make_batch(d, 3, 8, 8, 21);
  const Batch b32{b64.x_start.to(at::kFloat), b64.noise.to(at::kFloat), b64.t,
                  b64.model_output.to(at::kFloat)};
  const auto spec = dd::hybrid_loss_spec(0.001, 1000);
  const auto t64 =
      dd::training_terms(d, spec, b64.model_output, b64.x_start, x_t_of(d, b64), b64.t, b64.noise);
  const auto t32 =
      dd::training_terms(d, spec, b32.model_output, b32.x_start, x_t_of(d, b32), b32.t, b32.noise);
  EXPECT_EQ(t32.loss.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(t32.loss.to(at::kDouble), t64.loss, /*rtol=*/1e-3, /*atol=*/1e-4));
  EXPECT_TRUE(at::allclose(t32.vb_bits.to(at::kDouble), t64.vb_bits, 1e-3, 1e-4));
}

TEST(TrainingTerms, RejectsAnOutputWithTheWrongChannelCount) {
  const auto d = dd::make_gaussian_diffusion(dd::BetaSchedule::linear, 100,
                                             dd::ModelMeanType::epsilon, dd::ModelVarType::learned);
  const Batch b = make_batch(d, 3, 4, 4, 2);
  try {
    dd::training_terms(d, dd::hybrid_loss_spec(0.001, 100), b.model_output.slice(1, 0, 3),
                       b.x_start, x_t_of(d, b), b.t, b.noise);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("needs 6 channels"), std::string::npos) << e.what();
  }
}

}  // namespace
