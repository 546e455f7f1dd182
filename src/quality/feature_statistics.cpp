#include "quality/feature_statistics.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "data/npz.hpp"

namespace difftrain::quality {

FeatureSums zero_feature_sums(int64_t dims, const c10::Device& device) {
  const auto options = at::TensorOptions(at::kDouble).device(device);
  return {at::zeros({dims}, options), at::zeros({dims, dims}, options), 0};
}

void FeatureSums::add(const at::Tensor& features) {
  const at::Tensor f = features.to(at::kDouble);
  sum += f.sum(0);
  outer.addmm_(f.transpose(0, 1), f);
  count += f.size(0);
}

FeatureStatistics statistics_of(const FeatureSums& sums) {
  if (sums.count < 2)
    throw std::invalid_argument(
        fmt::format("a covariance needs at least 2 images, not {}", sums.count));
  const auto n = static_cast<double>(sums.count);
  const at::Tensor mu = sums.sum.cpu() / n;
  // Σ (f - μ)(f - μ)ᵀ / (n - 1) = (Σ f fᵀ - n μ μᵀ) / (n - 1)
  const at::Tensor sigma = (sums.outer.cpu() - n * at::outer(mu, mu)) / (n - 1);
  return {mu, sigma, sums.count};
}

void write_statistics(const std::string& path, const FeatureStatistics& stats) {
  const at::Tensor mu = stats.mu.to(at::kDouble).contiguous(),
                   sigma = stats.sigma.to(at::kDouble).contiguous();
  const int64_t count = stats.count;
  // libzip writes the archive to a temporary file and renames it at the end.
  data::write_npz(path, {{"mu", "<f8", mu.data_ptr(), 8, {mu.size(0)}},
                         {"sigma", "<f8", sigma.data_ptr(), 8, {sigma.size(0), sigma.size(1)}},
                         {"count", "<i8", &count, 8, {}}});
}

namespace {

const data::NpyData* find(const std::vector<data::NpyData>& arrays, const std::string& name) {
  for (const auto& a : arrays)
    if (a.name == name) return &a;
  return nullptr;
}

at::Tensor float64_tensor(const data::NpyData& a) {
  const std::vector<double> values = data::double_values(a);
  return at::tensor(values, at::kDouble).reshape(a.shape);
}

}  // namespace

bool holds_statistics(const std::string& path) {
  const std::vector<data::NpyData> arrays = data::read_npz(path, data::NpyKinds::numbers);
  return find(arrays, "mu") && find(arrays, "sigma");
}

FeatureStatistics read_statistics(const std::string& path) {
  const std::vector<data::NpyData> arrays = data::read_npz(path, data::NpyKinds::numbers);
  const data::NpyData *mu = find(arrays, "mu"), *sigma = find(arrays, "sigma");
  if (!mu || !sigma)
    throw std::invalid_argument(path + ": no mu and sigma (the statistics of pytorch-fid's " +
                                "--save-stats or `difftrain fid --save-stats`)");
  const bool square = sigma->shape.size() == 2 && sigma->shape[0] == sigma->shape[1];
  if (mu->shape.size() != 1 || !square || sigma->shape[0] != mu->shape[0] || mu->descr[0] != 'f' ||
      sigma->descr[0] != 'f')
    throw std::invalid_argument(fmt::format(
        "{}: mu must be float [D] and sigma float [D, D], not {} [{}] and {} [{}]", path, mu->descr,
        fmt::join(mu->shape, ", "), sigma->descr, fmt::join(sigma->shape, ", ")));
  FeatureStatistics s{float64_tensor(*mu), float64_tensor(*sigma), 0};
  if (const data::NpyData* count = find(arrays, "count"); count && count->descr[0] != 'f')
    s.count = data::int64_values(*count).at(0);
  return s;
}

}  // namespace difftrain::quality
