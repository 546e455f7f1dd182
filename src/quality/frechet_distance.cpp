#include "quality/frechet_distance.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <stdexcept>

namespace difftrain::quality {
namespace {

// The symmetric square root of a covariance, its rounding-negative eigenvalues taken as 0.
at::Tensor symmetric_sqrt(const at::Tensor& sigma) {
  const auto [eigenvalues, eigenvectors] = at::linalg_eigh(sigma);
  return at::matmul(eigenvectors * eigenvalues.clamp_min(0).sqrt(), eigenvectors.transpose(0, 1));
}

}  // namespace

double frechet_distance(const FeatureStatistics& a, const FeatureStatistics& b) {
  if (a.mu.sizes() != b.mu.sizes() || a.sigma.sizes() != b.sigma.sizes())
    throw std::invalid_argument(fmt::format(
        "the statistics have {} and {} features: they come from different networks or layers",
        a.mu.numel(), b.mu.numel()));
  const at::Tensor mu1 = a.mu.to(at::kDouble), mu2 = b.mu.to(at::kDouble);
  const at::Tensor sigma1 = a.sigma.to(at::kDouble), sigma2 = b.sigma.to(at::kDouble);
  const at::Tensor root1 = symmetric_sqrt(sigma1);
  at::Tensor m = at::matmul(at::matmul(root1, sigma2), root1);
  m = (m + m.transpose(0, 1)) / 2;  // symmetric to rounding; eigh reads one triangle
  const double trace_sqrt = at::linalg_eigvalsh(m).clamp_min(0).sqrt().sum().item<double>();
  const double mean_term = (mu1 - mu2).square().sum().item<double>();
  return mean_term + sigma1.trace().item<double>() + sigma2.trace().item<double>() - 2 * trace_sqrt;
}

}  // namespace difftrain::quality
