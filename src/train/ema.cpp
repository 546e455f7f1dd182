#include "train/ema.hpp"

#include <ATen/ATen.h>

#include <algorithm>

namespace difftrain::train {

std::vector<Ema> make_emas(const std::vector<double>& rates,
                           const std::vector<at::Tensor>& params) {
  std::vector<Ema> emas;
  for (double rate : rates) {
    Ema e{rate, {}};
    for (const auto& p : params)
      e.params.push_back(p.detach().clone());
    emas.push_back(std::move(e));
  }
  return emas;
}

double ema_rate_at(double rate, int64_t n, bool warmup) {
  return warmup ? std::min(rate, (1.0 + n) / (10.0 + n)) : rate;
}

void update_emas(std::vector<Ema>& emas, const std::vector<at::Tensor>& params, int64_t n,
                 bool warmup, const at::Tensor& skip) {
  std::vector<at::Tensor> detached;
  detached.reserve(params.size());
  for (const auto& p : params)
    detached.push_back(p.detach());
  const at::Tensor keep = 1.0 - skip;
  for (Ema& e : emas) {
    // One 0-dim weight for every tensor: (1 - rate), or 0 on a skipped step.
    const at::Tensor weight = keep * (1.0 - ema_rate_at(e.rate, n, warmup));
    at::_foreach_lerp_(e.params, detached, std::vector<at::Tensor>(detached.size(), weight));
  }
}

}  // namespace difftrain::train
