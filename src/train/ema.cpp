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
                 bool warmup) {
  std::vector<at::Tensor> detached;
  detached.reserve(params.size());
  for (const auto& p : params)
    detached.push_back(p.detach());
  for (Ema& e : emas)
    at::_foreach_lerp_(e.params, detached, 1.0 - ema_rate_at(e.rate, n, warmup));
}

}  // namespace difftrain::train
