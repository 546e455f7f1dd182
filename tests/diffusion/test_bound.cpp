// The full variational bound: structure (columns, totals) and invariants.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "diffusion/bound.hpp"
#include "diffusion/distributions.hpp"
#include "diffusion/gaussian_diffusion.hpp"

namespace dd = difftrain::diffusion;

namespace {

at::Tensor eight_bit_data(int64_t N, int64_t C, int64_t H, int64_t W) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  return at::randint(0, 256, {N, C, H, W}, gen, at::TensorOptions().dtype(at::kDouble)) / 127.5 -
         1.0;
}

TEST(Bound, PerfectDenoiserLeavesOnlyDecoderAndPrior) {
  const long T = 40;
  const auto d = dd::make_gaussian_diffusion(
      dd::BetaSchedule::cosine, T, dd::ModelMeanType::start_x, dd::ModelVarType::fixed_small);
  const at::Tensor x0 = eight_bit_data(3, 1, 4, 5);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  long calls = 0;
  const auto b = dd::calc_bpd_loop(
      d, [&](const at::Tensor&, const at::Tensor&) { return x0; }, x0, true,
      [&](long) { return at::randn(x0.sizes(), gen, x0.options()); }, [&](long) { ++calls; });
  EXPECT_EQ(calls, T);
  ASSERT_EQ(b.vb.sizes(), (at::IntArrayRef{3, T}));
  EXPECT_LT(b.vb.slice(1, 1).abs().max().item<double>(), 1e-10);
  EXPECT_LT(b.xstart_mse.abs().max().item<double>(), 1e-20);
  EXPECT_TRUE(at::allclose(b.total_bpd, b.vb.select(1, 0) + b.prior_bpd));
  // The decoder: mean x0 exactly, standard deviation sqrt(beta~_1); the edge bins are open.
  const double sigma = std::sqrt(d.posterior_variance[1].item<double>());
  const double half = 1.0 / 255.0 / sigma;
  const at::Tensor inner = dd::approx_standard_normal_cdf(at::full({1}, half, at::kDouble)) * 2 - 1;
  const at::Tensor edge = dd::approx_standard_normal_cdf(at::full({1}, half, at::kDouble));
  const at::Tensor is_edge = (x0.abs() > 0.999).to(at::kDouble);
  const at::Tensor want =
      -dd::mean_flat(is_edge * at::log(edge) + (1 - is_edge) * at::log(inner)) / std::log(2.0);
  EXPECT_TRUE(at::allclose(b.vb.select(1, 0), want, 1e-10, 1e-12));
}

TEST(Bound, PriorTermVanishesForLongSchedules) {
  const at::Tensor x0 = eight_bit_data(2, 3, 2, 2);
  const auto d = dd::make_gaussian_diffusion(
      dd::BetaSchedule::linear, 1000, dd::ModelMeanType::epsilon, dd::ModelVarType::fixed_large);
  const at::Tensor prior = dd::prior_bpd(d, x0);
  EXPECT_GT(prior.min().item<double>(), 0.0);
  EXPECT_LT(prior.max().item<double>(), 1e-4);
}

TEST(Bound, ColumnsAreInAscendingT) {
  const long T = 25;
  const auto d = dd::make_gaussian_diffusion(
      dd::BetaSchedule::linear, T, dd::ModelMeanType::epsilon, dd::ModelVarType::fixed_small);
  const at::Tensor x0 = eight_bit_data(2, 1, 2, 2);
  // The model's output encodes its timestep, so each column can be recomputed on its own.
  const auto model = [](const at::Tensor& x_t, const at::Tensor& t) {
    return 0.01 * t.to(x_t.scalar_type()).view({-1, 1, 1, 1}) * x_t;
  };
  const auto noise = [&](long t) { return at::full_like(x0, 0.1 * t - 1.0); };
  const auto b = dd::calc_bpd_loop(d, model, x0, false, noise);
  for (long step : {0L, 1L, 7L, T - 1}) {
    const at::Tensor t = at::full({2}, step, at::kLong);
    const at::Tensor x_t = dd::q_sample(d, x0, t, noise(step));
    const auto one = dd::vb_terms_bpd(d, model(x_t, t), x0, x_t, t, false);
    EXPECT_TRUE(at::allclose(b.vb.select(1, step), one.bits)) << "t = " << step;
  }
}

}  // namespace
