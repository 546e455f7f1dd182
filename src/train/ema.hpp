// Exponential moving averages of the model weights, one per rate (e.g. 0.9999).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace difftrain::train {

struct Ema {
  double rate = 0.9999;
  std::vector<at::Tensor> params;  // same order as the model's parameters
};

std::vector<Ema> make_emas(const std::vector<double>& rates, const std::vector<at::Tensor>& params);

// The rate used at update n: min(rate, (1 + n) / (10 + n)) with warm-up, so that short runs have
// useful averages; the plain rate otherwise.
double ema_rate_at(double rate, int64_t n, bool warmup);

// ema <- rate * ema + (1 - rate) * params, with fused multi-tensor ops; a no-op when `skip` (a
// 0-dim float32 on the device, 0 or 1) is 1, decided on the device.
void update_emas(std::vector<Ema>& emas, const std::vector<at::Tensor>& params, int64_t n,
                 bool warmup, const at::Tensor& skip);

}  // namespace difftrain::train
