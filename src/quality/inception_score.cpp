#include "quality/inception_score.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

namespace difftrain::quality {

ClassProbabilitySums zero_class_probability_sums(int64_t splits, int64_t classes, int64_t total,
                                                 const c10::Device& device) {
  if (splits < 1 || total < splits)
    throw std::invalid_argument(fmt::format(
        "the Inception Score's {} splits need at least as many images, not {}", splits, total));
  const auto options = at::TensorOptions(at::kDouble).device(device);
  return {at::zeros({splits, classes}, options), at::zeros({splits}, options),
          at::zeros({splits}, options), total};
}

int64_t split_of(int64_t i, int64_t n, int64_t splits) {
  // The largest s with s·n/S <= i, i.e. s = ceil((i + 1)·S / n) − 1.
  return ((i + 1) * splits + n - 1) / n - 1;
}

void ClassProbabilitySums::add(const at::Tensor& logits, int64_t first) {
  const int64_t splits = count.size(0);
  std::vector<int64_t> index(static_cast<std::size_t>(logits.size(0)));
  for (std::size_t k = 0; k < index.size(); ++k)
    index[k] = split_of(first + static_cast<int64_t>(k), total, splits);
  const at::Tensor split = at::tensor(index, at::kLong).to(logits.device());
  const at::Tensor log_p = at::log_softmax(logits.to(at::kDouble), 1);
  const at::Tensor p = log_p.exp();
  probability.index_add_(0, split, p);
  negentropy.index_add_(0, split, (p * log_p).sum(1));
  count.index_add_(0, split, at::ones({logits.size(0)}, count.options()));
}

InceptionScore inception_score(const ClassProbabilitySums& sums) {
  const at::Tensor count = sums.count.cpu();
  if (count.min().item<double>() < 1)
    throw std::invalid_argument("the Inception Score: a split holds no image");
  const at::Tensor mean_p = sums.probability.cpu() / count.unsqueeze(1);
  const at::Tensor log_is =
      sums.negentropy.cpu() / count - at::special_xlogy(mean_p, mean_p).sum(1);
  InceptionScore score;
  for (int64_t s = 0; s < count.size(0); ++s)
    score.splits.push_back(std::exp(log_is[s].item<double>()));
  const auto n = static_cast<double>(score.splits.size());
  for (double v : score.splits)
    score.mean += v / n;
  for (double v : score.splits)
    score.std += (v - score.mean) * (v - score.mean) / n;
  score.std = std::sqrt(score.std);
  return score;
}

}  // namespace difftrain::quality
