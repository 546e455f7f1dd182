// The stratified bits/dim estimate: its timesteps and weights, and its expectation over draws
// equal to the full bound of calc_bpd_loop.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "diffusion/bound.hpp"
#include "diffusion/bpd_estimate.hpp"
#include "diffusion/schedule.hpp"

namespace {

using namespace difftrain::diffusion;

at::Generator generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

TEST(BpdEstimate, StrataCoverEveryTimestepOnce) {
  auto g = generator(1);
  for (const long T : {2L, 7L, 50L, 1000L})
    for (const long k : {1L, 2L, 3L, 10L, 49L, 50L}) {
      if (k > T) continue;
      const StratifiedTimesteps s = stratified_timesteps(T, k, 4, g);
      ASSERT_EQ(s.t.sizes(), (std::vector<int64_t>{4, k}));
      EXPECT_DOUBLE_EQ(s.weights.sum().item<double>(), static_cast<double>(T));
      const auto t = s.t.accessor<int64_t, 2>();
      for (int64_t i = 0; i < 4; ++i)
        for (long j = 0; j < k; ++j) {
          EXPECT_GE(t[i][j], 0);
          EXPECT_LT(t[i][j], T);
          if (j > 0) {
            EXPECT_GT(t[i][j], t[i][j - 1]);
          }
          if (k >= 2 && j == 0) {
            EXPECT_EQ(t[i][0], 0) << "the decoder term is always evaluated";
          }
        }
      if (k == T) {
        EXPECT_TRUE(at::equal(s.t, at::arange(T, at::kLong).expand({4, T})));
      }
    }
  EXPECT_THROW(stratified_timesteps(10, 0, 1, g), std::invalid_argument);
  EXPECT_THROW(stratified_timesteps(10, 11, 1, g), std::invalid_argument);
}

TEST(BpdEstimate, ImagesDrawTheirOwnTimesteps) {
  // Shared timesteps would make every image's estimate err the same way, invisibly to the
  // standard error over images.
  const StratifiedTimesteps s = stratified_timesteps(1000, 5, 64, generator(2));
  for (long j = 1; j < 5; ++j)
    EXPECT_GT(std::get<0>(at::_unique(s.t.select(1, j))).numel(), 32) << "stratum " << j;
}

// A deterministic stand-in network (eps and variance heads from x_t) and fixed noise per t, so
// the only randomness of the estimate is the choice of timesteps.
struct Fixture {
  GaussianDiffusion d = make_gaussian_diffusion(BetaSchedule::linear, 30, ModelMeanType::epsilon,
                                                ModelVarType::learned_range);
  at::Tensor x_start, noise;
  ModelFn model = [](const at::Tensor& x, const at::Tensor& t) {
    const at::Tensor s = (t.to(x.scalar_type()) / 30).view({-1, 1, 1, 1});
    return at::cat({0.8 * x * s, at::tanh(x - s)}, 1);
  };
  NoiseFn noise_fn = [this](long t) { return noise[t]; };

  Fixture() {
    auto g = generator(3);
    x_start = at::randint(0, 256, {8, 1, 3, 3}, g, at::kLong).to(at::kDouble) / 127.5 - 1;
    noise = at::randn({30, 8, 1, 3, 3}, g, at::kDouble);
  }
};

TEST(BpdEstimate, ExpectationIsTheFullBound) {
  Fixture f;
  const BoundTerms full = calc_bpd_loop(f.d, f.model, f.x_start, true, f.noise_fn);
  for (const long k : {1L, 2L, 5L}) {
    auto g = generator(11);
    const int draws = 3000;
    at::Tensor sum = at::zeros({8}, at::kDouble), sumsq = at::zeros({8}, at::kDouble);
    for (int r = 0; r < draws; ++r) {
      const BpdEstimate e = estimate_bpd(f.d, f.model, f.x_start, k, g, true, f.noise_fn);
      EXPECT_TRUE(at::allclose(e.prior_bpd, full.prior_bpd));
      sum += e.total_bpd;
      sumsq += e.total_bpd.square();
    }
    const at::Tensor mean = sum / draws;
    const at::Tensor se = at::sqrt((sumsq / draws - mean.square()) / (draws - 1));
    ASSERT_GT(se.min().item<double>(), 0) << "the estimate should vary with the timesteps";
    const double worst = ((mean - full.total_bpd).abs() / se).max().item<double>();
    EXPECT_LT(worst, 5.0) << "K = " << k << ": mean " << mean << " full " << full.total_bpd;
  }
}

TEST(BpdEstimate, EveryTimestepGivesTheFullBoundExactly) {
  Fixture f;
  const BoundTerms full = calc_bpd_loop(f.d, f.model, f.x_start, true, f.noise_fn);
  const BpdEstimate e = estimate_bpd(f.d, f.model, f.x_start, 30, generator(5), true, f.noise_fn);
  EXPECT_TRUE(at::allclose(e.total_bpd, full.total_bpd, 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(e.vb, full.vb, 1e-12, 1e-12));
}

TEST(BpdEstimate, DrawsItsOwnNoiseFromTheGenerator) {
  Fixture f;
  const BpdEstimate a = estimate_bpd(f.d, f.model, f.x_start.to(at::kFloat), 4, generator(9));
  const BpdEstimate b = estimate_bpd(f.d, f.model, f.x_start.to(at::kFloat), 4, generator(9));
  EXPECT_TRUE(at::equal(a.total_bpd, b.total_bpd));
  EXPECT_TRUE(at::equal(a.timesteps.t, b.timesteps.t));
  EXPECT_EQ(a.total_bpd.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::isfinite(a.total_bpd).all().item<bool>());
}

}  // namespace
