// Importance sampling of timesteps: probabilities follow the recorded second moments, the ring
// buffer keeps the newest losses, and the reweighted estimate is unbiased.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <deque>
#include <map>

#include "diffusion/timestep_sampler.hpp"

namespace dd = difftrain::diffusion;

namespace {

at::Generator generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

dd::TimestepSampler importance(long T) {
  return dd::make_timestep_sampler(dd::TimestepSamplerKind::loss_second_moment, T, at::kCPU);
}

TEST(TimestepSampler, UniformDrawsHaveUnitWeights) {
  const auto s = dd::make_timestep_sampler(dd::TimestepSamplerKind::uniform, 50, at::kCPU);
  const auto d = dd::draw_timesteps(s, 1000, generator(1));
  EXPECT_EQ(d.t.min().item<long>(), 0);
  EXPECT_EQ(d.t.max().item<long>(), 49);
  EXPECT_TRUE(at::all(d.weights == 1.0).item<bool>());
}

TEST(TimestepSampler, UniformUntilEveryTimestepHasItsHistory) {
  auto s = importance(4);
  // Nine losses for every t, ten for all but t = 3: still uniform.
  for (int i = 0; i < 9; ++i)
    dd::record_losses(s, torch::tensor({0L, 1L, 2L, 3L}), torch::tensor({1.0, 2.0, 3.0, 4.0}));
  dd::record_losses(s, torch::tensor({0L, 1L, 2L}), torch::tensor({1.0, 2.0, 3.0}));
  EXPECT_TRUE(at::allclose(dd::timestep_probabilities(s), at::full({4}, 0.25, at::kDouble)));
  dd::record_losses(s, torch::tensor({3L}), torch::tensor({4.0}));
  // Now p(t) ~ sqrt(mean(L^2)) = (1, 2, 3, 4) / 10, mixed with a uniform floor of 0.001.
  const at::Tensor want = torch::tensor({0.1, 0.2, 0.3, 0.4}, at::kDouble) * 0.999 + 0.001 / 4;
  EXPECT_TRUE(at::allclose(dd::timestep_probabilities(s), want, 1e-12, 1e-15));
}

TEST(TimestepSampler, ProbabilitiesFollowSecondMoments) {
  auto s = importance(3);
  // t = 0 sees losses 1 and 3 alternately: E[L^2] = 5.
  for (int i = 0; i < 10; ++i)
    dd::record_losses(s, torch::tensor({0L, 1L, 2L}), torch::tensor({i % 2 ? 1.0 : 3.0, 2.0, 0.5}));
  const double a = std::sqrt(5.0), b = 2.0, c = 0.5, sum = a + b + c;
  const at::Tensor want =
      torch::tensor({a / sum, b / sum, c / sum}, at::kDouble) * 0.999 + 0.001 / 3;
  EXPECT_TRUE(at::allclose(dd::timestep_probabilities(s), want, 1e-12, 1e-15));
}

// The vectorised update equals recording one loss at a time into a per-t queue of 10.
TEST(TimestepSampler, KeepsTheNewestLossesInOrder) {
  const long T = 5;
  auto s = importance(T);
  std::map<long, std::deque<double>> queues;
  auto gen = generator(3);
  for (int round = 0; round < 6; ++round) {
    // Batches with many repeats of a t (more than 10 in one batch for t = 2).
    const at::Tensor t = at::cat({at::randint(T, {20}, gen, at::kLong), at::full({13}, 2L)});
    const at::Tensor l = at::rand({t.size(0)}, gen, at::TensorOptions().dtype(at::kDouble));
    dd::record_losses(s, t, l);
    for (int64_t i = 0; i < t.size(0); ++i) {
      auto& q = queues[t[i].item<long>()];
      q.push_back(l[i].item<double>());
      if (q.size() > 10) q.pop_front();
    }
  }
  for (long t = 0; t < T; ++t) {
    std::vector<double> got(s.loss_history[t].data_ptr<double>(),
                            s.loss_history[t].data_ptr<double>() + 10);
    std::vector<double> want(queues[t].begin(), queues[t].end());
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    EXPECT_EQ(got, want) << "t = " << t;
  }
}

TEST(TimestepSampler, ReweightedEstimateIsUnbiased) {
  const long T = 100;
  auto s = importance(T);
  // A fixed loss table, strongly non-uniform in t; its uniform mean is the target.
  const at::Tensor table = at::exp(-at::arange(T, at::kDouble) / 10.0) * 5 + 0.01;
  for (int i = 0; i < 10; ++i)
    dd::record_losses(s, at::arange(T, at::kLong), table);
  const auto d = dd::draw_timesteps(s, 400000, generator(7));
  const at::Tensor weighted = d.weights * table.index_select(0, d.t);
  const double estimate = weighted.mean().item<double>();
  const double standard_error = weighted.std().item<double>() / std::sqrt(400000.0);
  const double uniform_mean = table.mean().item<double>();
  EXPECT_NEAR(estimate, uniform_mean, 4 * standard_error);
  // ... and importance sampling has lower variance than uniform sampling of the same table.
  EXPECT_LT(weighted.std().item<double>(), table.std().item<double>());
}

}  // namespace
