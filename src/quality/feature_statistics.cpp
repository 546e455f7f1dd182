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

void write_statistics(const std::string& path, const SetStatistics& stats) {
  std::vector<at::Tensor> keep;  // the float64 copies the entries point into
  std::vector<data::NpyArray> entries;
  const auto add = [&](const std::string& mu_name, const std::string& sigma_name,
                       const FeatureStatistics& s) {
    const at::Tensor mu = s.mu.to(at::kDouble).contiguous();
    const at::Tensor sigma = s.sigma.to(at::kDouble).contiguous();
    keep.insert(keep.end(), {mu, sigma});
    entries.push_back({mu_name, "<f8", mu.data_ptr(), 8, {mu.size(0)}});
    entries.push_back({sigma_name, "<f8", sigma.data_ptr(), 8, {sigma.size(0), sigma.size(1)}});
  };
  add("mu", "sigma", stats.pool3);
  if (stats.spatial) add("mu_s", "sigma_s", *stats.spatial);
  const int64_t count = stats.pool3.count;
  entries.push_back({"count", "<i8", &count, 8, {}});
  // libzip writes the archive to a temporary file and renames it at the end.
  data::write_npz(path, entries);
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

SetStatistics read_statistics(const std::string& path) {
  const std::vector<data::NpyData> arrays = data::read_npz(path, data::NpyKinds::numbers);
  // mu [D] and sigma [D, D], float; nullopt where the file has neither.
  const auto gaussian = [&](const std::string& mu_name,
                            const std::string& sigma_name) -> std::optional<FeatureStatistics> {
    const data::NpyData *mu = find(arrays, mu_name), *sigma = find(arrays, sigma_name);
    if (!mu && !sigma) return std::nullopt;
    if (!mu || !sigma)
      throw std::invalid_argument(fmt::format("{}: {} without {}", path, mu ? mu_name : sigma_name,
                                              mu ? sigma_name : mu_name));
    const bool square = sigma->shape.size() == 2 && sigma->shape[0] == sigma->shape[1];
    if (mu->shape.size() != 1 || !square || sigma->shape[0] != mu->shape[0] ||
        mu->descr[0] != 'f' || sigma->descr[0] != 'f')
      throw std::invalid_argument(
          fmt::format("{}: {} must be float [D] and {} float [D, D], not {} [{}] and {} [{}]", path,
                      mu_name, sigma_name, mu->descr, fmt::join(mu->shape, ", "), sigma->descr,
                      fmt::join(sigma->shape, ", ")));
    return FeatureStatistics{float64_tensor(*mu), float64_tensor(*sigma), 0};
  };
  std::optional<FeatureStatistics> pool3 = gaussian("mu", "sigma");
  if (!pool3)
    throw std::invalid_argument(path + ": no mu and sigma (the statistics of pytorch-fid's " +
                                "--save-stats or `difftrain fid --save-stats`)");
  SetStatistics s{*pool3, gaussian("mu_s", "sigma_s")};
  if (const data::NpyData* count = find(arrays, "count"); count && count->descr[0] != 'f') {
    s.pool3.count = data::int64_values(*count).at(0);
    if (s.spatial) s.spatial->count = s.pool3.count;
  }
  return s;
}

}  // namespace difftrain::quality
