// Respacing: space_timesteps against improved-diffusion's respace.py outputs (computed with its
// Python code), and respaced tables that keep alphas_cumprod at the kept steps.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <numeric>
#include <stdexcept>

#include "diffusion/respace.hpp"
#include "diffusion/schedule.hpp"

namespace {

using namespace difftrain::diffusion;

std::vector<long> range(long begin, long end, long step) {
  std::vector<long> r;
  for (long t = begin; t < end; t += step)
    r.push_back(t);
  return r;
}

TEST(SpaceTimesteps, MatchesImprovedDiffusion) {
  EXPECT_EQ(space_timesteps(1000, "ddim50"), range(0, 1000, 20));
  EXPECT_EQ(space_timesteps(1000, "ddim250"), range(0, 1000, 4));
  EXPECT_EQ(space_timesteps(4000, "ddim25"), range(0, 4000, 160));
  EXPECT_EQ(space_timesteps(100, "ddim10"), range(0, 100, 10));
  EXPECT_EQ(space_timesteps(1000, "10,10,10"),
            (std::vector<long>{0,   37,  74,  111, 148, 185, 222, 259, 296, 333,
                               334, 371, 408, 445, 482, 518, 555, 592, 629, 666,
                               667, 704, 741, 778, 815, 851, 888, 925, 962, 999}));
  EXPECT_EQ(space_timesteps(100, "10,10,10"),
            (std::vector<long>{0,  4,  7,  11, 15, 18, 22, 26, 29, 33, 34, 38, 41, 45, 48,
                               52, 55, 59, 62, 66, 67, 71, 74, 78, 81, 85, 88, 92, 95, 99}));
  EXPECT_EQ(space_timesteps(1000, "25"),
            (std::vector<long>{0,   42,  83,  125, 166, 208, 250, 291, 333, 375, 416, 458, 500,
                               541, 583, 624, 666, 708, 749, 791, 832, 874, 916, 957, 999}));
  EXPECT_EQ(space_timesteps(50, "3,1,10"),
            (std::vector<long>{0, 8, 16, 17, 34, 36, 37, 39, 41, 42, 44, 46, 47, 49}));
  EXPECT_EQ(space_timesteps(30, "10"), (std::vector<long>{0, 3, 6, 10, 13, 16, 19, 23, 26, 29}));
  // A count equal to the section keeps every step.
  std::vector<long> all(1000);
  std::iota(all.begin(), all.end(), 0L);
  EXPECT_EQ(space_timesteps(1000, "1000"), all);
  // 4000 "250": spot checks of a long list.
  const auto s = space_timesteps(4000, "250");
  ASSERT_EQ(s.size(), 250u);
  EXPECT_EQ(s[8], 128);
  EXPECT_EQ(s[9], 145);
  EXPECT_EQ(s[124], 1991);
  EXPECT_EQ(s[125], 2008);
  EXPECT_EQ(s[249], 3999);
}

TEST(SpaceTimesteps, RoundsHalfToEvenAsPython) {
  // Stride 1.25: positions 0, 1.25, 2.5, 3.75, 5; Python's round(2.5) is 2.
  EXPECT_EQ(space_timesteps(6, "5"), (std::vector<long>{0, 1, 2, 4, 5}));
}

TEST(SpaceTimesteps, RejectsBadSpecs) {
  for (const char* spec : {"ddim11", "abc", "10,x", "", "1", "0", "200", "-5", "ddim", "10,,10"}) {
    try {
      space_timesteps(100, spec);
      ADD_FAILURE() << "accepted '" << spec << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("respacing '" + std::string(spec) + "'"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(Respace, KeepsAlphasCumprodAtTheKeptSteps) {
  for (const auto schedule : {BetaSchedule::linear, BetaSchedule::cosine}) {
    const GaussianDiffusion base = make_gaussian_diffusion(schedule, 1000, ModelMeanType::epsilon,
                                                           ModelVarType::learned_range);
    for (const char* spec : {"ddim50", "10,10,10", "25"}) {
      const std::vector<long> kept = space_timesteps(1000, spec);
      const RespacedDiffusion r = respace(base, kept);
      ASSERT_EQ(r.diffusion.num_timesteps, static_cast<long>(kept.size()));
      EXPECT_EQ(r.diffusion.model_var_type, ModelVarType::learned_range);
      const at::Tensor map = r.timestep_map;
      EXPECT_TRUE(at::equal(map, at::tensor(std::vector<int64_t>(kept.begin(), kept.end()))));
      const at::Tensor want = base.alphas_cumprod.index_select(0, map);
      // Up to the rounding of 1 - (1 - ratio) in the betas, relative to small abar at the end.
      const double worst = ((r.diffusion.alphas_cumprod - want).abs() / want).max().item<double>();
      EXPECT_LT(worst, 1e-9) << spec;
      // The betas are 1 - abar_i / abar_prev_kept, and every table follows from them.
      const at::Tensor prev = at::cat({at::ones({1}, at::kDouble), want.slice(0, 0, -1)});
      EXPECT_TRUE(at::allclose(r.diffusion.betas, 1 - want / prev, 1e-12, 0)) << spec;
      const GaussianDiffusion rebuilt =
          make_gaussian_diffusion(1 - want / prev, base.model_mean_type, base.model_var_type);
      EXPECT_TRUE(at::allclose(r.diffusion.posterior_log_variance_clipped,
                               rebuilt.posterior_log_variance_clipped, 1e-12, 0));
    }
  }
}

TEST(Respace, KeepingEveryStepGivesTheBaseDiffusion) {
  const GaussianDiffusion base = make_gaussian_diffusion(
      BetaSchedule::linear, 100, ModelMeanType::epsilon, ModelVarType::fixed_small);
  const RespacedDiffusion r = respace(base, space_timesteps(100, "100"));
  EXPECT_TRUE(at::allclose(r.diffusion.betas, base.betas, 1e-10, 1e-12));
  EXPECT_TRUE(at::allclose(r.diffusion.posterior_variance, base.posterior_variance, 1e-9, 1e-15));
}

TEST(Respace, TheNetworkSeesTheOriginalTimestep) {
  const GaussianDiffusion base = make_gaussian_diffusion(
      BetaSchedule::linear, 1000, ModelMeanType::epsilon, ModelVarType::fixed_small);
  const RespacedDiffusion r = respace(base, space_timesteps(1000, "ddim50"));
  at::Tensor seen;
  const ModelFn network = [&](const at::Tensor& x, const at::Tensor& t) {
    seen = t;
    return x;
  };
  // ddim50 of T = 1000 keeps every 20th step: indices 0, 1, 49 are timesteps 0, 20, 980.
  const ModelFn model = respaced_model(network, r.timestep_map);
  model(at::zeros({3, 1, 2, 2}), at::tensor({0L, 1L, 49L}));
  EXPECT_EQ(seen.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(seen, at::tensor({0L, 20L, 980L})));
}

TEST(Respace, RejectsUnorderedTimesteps) {
  const GaussianDiffusion base = make_gaussian_diffusion(
      BetaSchedule::linear, 100, ModelMeanType::epsilon, ModelVarType::fixed_small);
  EXPECT_THROW(respace(base, {0, 5, 5}), std::invalid_argument);
  EXPECT_THROW(respace(base, {0, 100}), std::invalid_argument);
}

}  // namespace
