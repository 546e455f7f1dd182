#include "quality/precision_recall.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace difftrain::quality {

at::Tensor squared_distances(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor norm_a = a.square().sum(1, /*keepdim=*/true);
  const at::Tensor norm_b = b.square().sum(1).unsqueeze(0);
  return (norm_a - 2 * at::matmul(a, b.t()) + norm_b).clamp_min(0);
}

at::Tensor manifold_radii(const at::Tensor& features, int64_t k, int64_t begin, int64_t end,
                          int64_t rows) {
  if (k < 1 || features.size(0) <= k)
    throw std::invalid_argument(
        fmt::format("precision and recall with k = {} need more than {} images in a set, not {}", k,
                    k, features.size(0)));
  std::vector<at::Tensor> radii;
  for (int64_t i = begin; i < end; i += rows) {
    const at::Tensor d =
        squared_distances(features.narrow(0, i, std::min(rows, end - i)), features);
    radii.push_back(std::get<0>(d.topk(k + 1, 1, /*largest=*/false, /*sorted=*/true)).select(1, k));
  }
  return radii.empty() ? at::empty({0}, features.options()) : at::cat(radii);
}

at::Tensor in_manifold(const at::Tensor& queries, const at::Tensor& features,
                       const at::Tensor& radii, int64_t rows) {
  std::vector<at::Tensor> inside;
  for (int64_t i = 0; i < queries.size(0); i += rows) {
    const at::Tensor d =
        squared_distances(queries.narrow(0, i, std::min(rows, queries.size(0) - i)), features);
    inside.push_back((d <= radii.unsqueeze(0)).any(1));
  }
  return inside.empty() ? at::empty({0}, queries.options().dtype(at::kBool)) : at::cat(inside);
}

int64_t distance_block_rows(int64_t n) {
  return std::clamp<int64_t>((int64_t{1} << 26) / std::max<int64_t>(n, 1), 1, 10000);
}

}  // namespace difftrain::quality
