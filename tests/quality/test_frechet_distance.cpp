// The Fréchet distance against its closed form where the covariances share eigenvectors, and the
// feature sums against a direct mean and covariance.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "quality/feature_statistics.hpp"
#include "quality/frechet_distance.hpp"

namespace difftrain::quality {
namespace {

at::Tensor random_orthogonal(int64_t d, uint64_t seed) {
  at::Generator g = at::detail::createCPUGenerator(seed);
  return std::get<0>(at::linalg_qr(at::randn({d, d}, g, at::kDouble)));
}

// Q diag(λ) Qᵀ
at::Tensor covariance(const at::Tensor& q, const at::Tensor& eigenvalues) {
  return at::matmul(q * eigenvalues, q.transpose(0, 1));
}

TEST(FrechetDistance, IsZeroBetweenAGaussianAndItselfAndSymmetric) {
  const int64_t d = 64;
  const at::Tensor q = random_orthogonal(d, 1);
  const FeatureStatistics a{at::randn({d}, at::kDouble),
                            covariance(q, at::rand({d}, at::kDouble) + 0.1), 0};
  const FeatureStatistics b{at::randn({d}, at::kDouble),
                            covariance(random_orthogonal(d, 2), at::rand({d}, at::kDouble)), 0};
  EXPECT_NEAR(frechet_distance(a, a), 0.0, 1e-9);
  EXPECT_NEAR(frechet_distance(a, b), frechet_distance(b, a), 1e-9);
  EXPECT_GT(frechet_distance(a, b), 1.0);
}

// With Σ₁ = Q diag(a) Qᵀ and Σ₂ = Q diag(b) Qᵀ, tr(Σ₁ + Σ₂ - 2 (Σ₁Σ₂)^½) = Σ (√a - √b)².
TEST(FrechetDistance, IsTheClosedFormForCovariancesWithCommonEigenvectors) {
  const int64_t d = 96;
  const at::Tensor q = random_orthogonal(d, 3);
  const at::Tensor a = at::rand({d}, at::kDouble) * 4, b = at::rand({d}, at::kDouble);
  // Half of b's eigenvalues zero: a singular covariance, as FID's 2048 features have with fewer
  // than 2049 images.
  b.narrow(0, 0, d / 2).zero_();
  const at::Tensor mu1 = at::randn({d}, at::kDouble), mu2 = at::randn({d}, at::kDouble);
  const double expected =
      ((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()).item<double>();
  const double fd = frechet_distance({mu1, covariance(q, a), 0}, {mu2, covariance(q, b), 0});
  // √ of the zero eigenvalues' rounding (1e-15) adds up to 1e-6 over 48 of them.
  EXPECT_NEAR(fd, expected, 1e-8 * expected);
}

TEST(FrechetDistance, RefusesStatisticsOfDifferentDimensions) {
  const FeatureStatistics a{at::zeros({4}, at::kDouble), at::eye(4, at::kDouble), 0},
      b{at::zeros({3}, at::kDouble), at::eye(3, at::kDouble), 0};
  try {
    frechet_distance(a, b);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("4 and 3 features"), std::string::npos) << e.what();
  }
}

TEST(FeatureSums, BatchesGiveTheMeanAndTheUnbiasedCovariance) {
  const at::Tensor f = at::rand({37, 16}, at::kFloat) * 3 + 1;  // float32, as the network's
  FeatureSums sums = zero_feature_sums(16, at::kCPU);
  for (int64_t i = 0; i < 37; i += 5)
    sums.add(f.narrow(0, i, std::min<int64_t>(5, 37 - i)));
  const FeatureStatistics s = statistics_of(sums);
  const at::Tensor f64 = f.to(at::kDouble);
  EXPECT_EQ(s.count, 37);
  EXPECT_TRUE(at::allclose(s.mu, f64.mean(0), 0, 1e-12));
  EXPECT_TRUE(at::allclose(s.sigma, at::cov(f64.transpose(0, 1)), 0, 1e-12));
  EXPECT_THROW(statistics_of(zero_feature_sums(16, at::kCPU)), std::invalid_argument);
}

}  // namespace
}  // namespace difftrain::quality
