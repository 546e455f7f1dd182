// Beta schedules and derived tables against the formulas of the golden README (§4.1-4.2),
// evaluated here with scalar float64 loops.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "diffusion/schedule.hpp"
#include "reference.hpp"

namespace dd = difftrain::diffusion;

namespace {

std::vector<double> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kDouble).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

void expect_tables_match_formulas(dd::BetaSchedule schedule, long T) {
  const dd::GaussianDiffusion d = dd::make_gaussian_diffusion(
      schedule, T, dd::ModelMeanType::epsilon, dd::ModelVarType::fixed_small);
  const auto ref = dd::reference::tables(schedule, T);
  const auto got_betas = to_vector(d.betas), abar = to_vector(d.alphas_cumprod),
             abar_prev = to_vector(d.alphas_cumprod_prev), pv = to_vector(d.posterior_variance),
             plv = to_vector(d.posterior_log_variance_clipped),
             c0 = to_vector(d.posterior_mean_coef1), ct = to_vector(d.posterior_mean_coef2),
             srac = to_vector(d.sqrt_recip_alphas_cumprod),
             srm1 = to_vector(d.sqrt_recipm1_alphas_cumprod);
  ASSERT_EQ(got_betas.size(), static_cast<std::size_t>(T));
  for (long t = 0; t < T; ++t) {
    SCOPED_TRACE("t = " + std::to_string(t));
    const double cum = ref.abar[t];
    EXPECT_NEAR(got_betas[t], ref.betas[t], 1e-15);
    EXPECT_NEAR(abar[t], cum, 1e-13);
    EXPECT_NEAR(abar_prev[t], ref.abar_prev[t], 1e-13);
    EXPECT_NEAR(pv[t], ref.posterior_variance[t], 1e-13);
    EXPECT_NEAR(plv[t], ref.posterior_log_variance_clipped[t], 1e-9);
    EXPECT_NEAR(c0[t], ref.coef1[t], 1e-12);
    EXPECT_NEAR(ct[t], ref.coef2[t], 1e-12);
    EXPECT_NEAR(srac[t], std::sqrt(1 / cum), 1e-9 * std::sqrt(1 / cum));
    EXPECT_NEAR(srm1[t], std::sqrt(1 / cum - 1), 1e-9 * std::sqrt(1 / cum));
  }
  EXPECT_EQ(pv[0], 0.0);
  EXPECT_EQ(abar_prev[0], 1.0);
}

}  // namespace

TEST(Schedule, LinearEndpointsScaleWithT) {
  const auto b = dd::get_named_beta_schedule(dd::BetaSchedule::linear, 1000);
  EXPECT_DOUBLE_EQ(b[0].item<double>(), 1e-4);
  EXPECT_DOUBLE_EQ(b[999].item<double>(), 0.02);
  const auto b4000 = dd::get_named_beta_schedule(dd::BetaSchedule::linear, 4000);
  EXPECT_DOUBLE_EQ(b4000[3999].item<double>(), 0.005);
  EXPECT_EQ(b.scalar_type(), at::kDouble);
}

TEST(Schedule, CosineCappedAt0999) {
  const auto b = dd::get_named_beta_schedule(dd::BetaSchedule::cosine, 4000);
  EXPECT_DOUBLE_EQ(b.max().item<double>(), 0.999);
  EXPECT_GT(b.min().item<double>(), 0.0);
}

TEST(Schedule, TablesMatchFormulasLinear1000) {
  expect_tables_match_formulas(dd::BetaSchedule::linear, 1000);
}
TEST(Schedule, TablesMatchFormulasCosine4000) {
  expect_tables_match_formulas(dd::BetaSchedule::cosine, 4000);
}
TEST(Schedule, SmallestValidT) {
  expect_tables_match_formulas(dd::BetaSchedule::cosine, 2);
  expect_tables_match_formulas(dd::BetaSchedule::linear, 21);
}
TEST(Schedule, LargeT) {
  for (auto s : {dd::BetaSchedule::linear, dd::BetaSchedule::cosine}) {
    const auto d = dd::make_gaussian_diffusion(s, 10000, dd::ModelMeanType::epsilon,
                                               dd::ModelVarType::learned_range);
    EXPECT_TRUE(at::isfinite(d.posterior_log_variance_clipped).all().item<bool>());
    EXPECT_TRUE(at::isfinite(d.sqrt_recipm1_alphas_cumprod).all().item<bool>());
  }
}

TEST(Schedule, RejectsOutOfRangeTNamingIt) {
  auto message = [](dd::BetaSchedule s, long T) {
    try {
      dd::get_named_beta_schedule(s, T);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(dd::BetaSchedule::linear, 20).find("T = 20"), std::string::npos);
  EXPECT_NE(message(dd::BetaSchedule::cosine, 1).find("T = 1"), std::string::npos);
  EXPECT_NE(message(dd::BetaSchedule::cosine, 0).find("T = 0"), std::string::npos);
  EXPECT_NE(message(dd::BetaSchedule::linear, -5).find("T = -5"), std::string::npos);
  EXPECT_EQ(message(dd::BetaSchedule::linear, 21), "no error");
  EXPECT_EQ(message(dd::BetaSchedule::cosine, 2), "no error");
}

TEST(Types, ParsersNameTheValidValues) {
  try {
    dd::parse_model_var_type("learnt");
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'learnt'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("learned_range"), std::string::npos);
  }
  EXPECT_EQ(dd::parse_loss_type("rescaled_kl"), dd::LossType::rescaled_kl);
  EXPECT_EQ(dd::to_string(dd::ModelMeanType::previous_x), "previous_x");
}
