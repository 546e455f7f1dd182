// Timestep densities: importance sampling (probabilities follow the recorded second moments, the
// ring buffer keeps the newest losses), logit-normal bins, stratified draws; every reweighted
// estimate is unbiased.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <deque>
#include <map>

#include "diffusion/timestep_sampler.hpp"

namespace dd = difftrain::diffusion;

namespace {

const auto f64 = at::TensorOptions().dtype(at::kDouble);

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

// The other densities (logit-normal, stratified draws of any density), reweighted the same way.
dd::TimestepSampler sampler(dd::TimestepSamplerKind kind, long T, bool stratified = false) {
  dd::TimestepSamplerOptions o;
  o.kind = kind;
  o.stratified = stratified;
  o.logit_normal_mean = 0.5;
  o.logit_normal_std = 0.8;
  return dd::make_timestep_sampler(o, T, at::kCPU);
}

TEST(TimestepDensity, LogitNormalProbabilitiesAreTheBinMasses) {
  const long T = 50;
  const auto s = sampler(dd::TimestepSamplerKind::logit_normal, T);
  const at::Tensor p = dd::timestep_probabilities(s);
  EXPECT_NEAR(p.sum().item<double>(), 1.0, 1e-12);
  // Phi((logit(u) - 0.5) / 0.8) at the edges t/T, (t+1)/T, mixed with 0.001 of the uniform.
  const auto cdf = [](double u) {
    if (u <= 0) return 0.0;
    if (u >= 1) return 1.0;
    return 0.5 * std::erfc(-(std::log(u / (1 - u)) - 0.5) / 0.8 / std::sqrt(2.0));
  };
  for (long t : {0L, 1L, 17L, 31L, 48L, 49L}) {
    const double mass = cdf(double(t + 1) / T) - cdf(double(t) / T);
    EXPECT_NEAR(p[t].item<double>(), 0.999 * mass + 0.001 / T, 1e-12) << "t = " << t;
  }
  // The floor bounds the importance weight 1 / (T p(t)) by 1000.
  EXPECT_LE((1.0 / (T * p)).max().item<double>(), 1000.0 + 1e-9);
}

TEST(TimestepDensity, StratifiedGlobalBatchCoversEveryTimestepEvenly) {
  const long T = 40;
  const auto s = sampler(dd::TimestepSamplerKind::stratified, T);
  for (int64_t k : {1, 3}) {
    const auto d = dd::draw_timesteps(s, k * T, generator(11 + k));
    // n = k T strata of [0, 1): each t exactly k times, in a random order.
    EXPECT_TRUE(at::equal(at::bincount(d.t, {}, T), at::full({T}, k, at::kLong)));
    EXPECT_TRUE(at::all(d.weights == 1.0).item<bool>());
    EXPECT_FALSE(at::equal(d.t.slice(0, 0, T), at::arange(T, at::kLong)));
  }
  // A global batch of 16 over T = 40: every stratum of 2.5 timesteps holds one draw, so the 4
  // ranks' slices of 4 together cover [0, T) evenly.
  const auto d = dd::draw_timesteps(s, 16, generator(3));
  const at::Tensor sorted = std::get<0>(d.t.sort());
  for (int64_t i = 0; i < 16; ++i) {
    EXPECT_GE(sorted[i].item<long>(), static_cast<long>(std::floor(i * 2.5)));
    EXPECT_LE(sorted[i].item<long>(), static_cast<long>(std::floor((i + 1) * 2.5)));
  }
}

// Every density, plain or stratified, reweighted by 1 / (T p(t)): the estimate of the mean of a
// fixed loss table agrees with the uniform one (the exact mean) within its standard error.
TEST(TimestepDensity, ReweightedEstimateIsUnbiased) {
  const long T = 50;
  const at::Tensor t_all = at::arange(T, f64);
  const at::Tensor loss_table = 1.0 + at::sin(t_all).square() * t_all / 10 + 5.0 * (t_all < 3);
  const double exact = loss_table.mean().item<double>();

  auto importance = sampler(dd::TimestepSamplerKind::loss_second_moment, T);
  for (int i = 0; i < 10; ++i)
    dd::record_losses(importance, at::arange(T, at::kLong), loss_table);
  auto importance_stratified = importance;
  importance_stratified.stratified = true;

  const std::vector<std::pair<std::string, dd::TimestepSampler>> samplers{
      {"uniform", sampler(dd::TimestepSamplerKind::uniform, T)},
      {"stratified", sampler(dd::TimestepSamplerKind::stratified, T)},
      {"logit_normal", sampler(dd::TimestepSamplerKind::logit_normal, T)},
      {"logit_normal stratified", sampler(dd::TimestepSamplerKind::logit_normal, T, true)},
      {"loss-second-moment", importance},
      {"loss-second-moment stratified", importance_stratified}};
  for (const auto& [name, s] : samplers) {
    SCOPED_TRACE(name);
    // The exact expectation sum_t p(t) w(t) L(t) is the uniform mean.
    const at::Tensor p = dd::timestep_probabilities(s);
    EXPECT_NEAR((p * (1.0 / (T * p)) * loss_table).sum().item<double>(), exact, 1e-12);
    // And the draws: 3000 global batches of 32; batch means are independent.
    const int64_t batches = 3000, B = 32;
    auto gen = generator(99);
    std::vector<double> means;
    for (int64_t k = 0; k < batches; ++k) {
      const auto d = dd::draw_timesteps(s, B, gen);
      means.push_back((d.weights * loss_table.index_select(0, d.t)).mean().item<double>());
    }
    const at::Tensor m = at::tensor(means, f64);
    const double estimate = m.mean().item<double>();
    const double stderr_ = m.std().item<double>() / std::sqrt(double(batches));
    EXPECT_NEAR(estimate, exact, 4 * stderr_ + 1e-12) << "stderr " << stderr_;
  }
}

TEST(TimestepDensity, StratifiedDrawsHaveLowerVariance) {
  const long T = 50;
  const at::Tensor loss_table = at::linspace(0.0, 4.0, T, f64).square();
  const auto spread = [&](const dd::TimestepSampler& s) {
    auto gen = generator(4);
    std::vector<double> means;
    for (int k = 0; k < 400; ++k) {
      const auto d = dd::draw_timesteps(s, 25, gen);
      means.push_back((d.weights * loss_table.index_select(0, d.t)).mean().item<double>());
    }
    return at::tensor(means, f64).std().item<double>();
  };
  EXPECT_LT(spread(sampler(dd::TimestepSamplerKind::stratified, T)),
            0.5 * spread(sampler(dd::TimestepSamplerKind::uniform, T)));
}

}  // namespace
