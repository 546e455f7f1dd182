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

AverageKernels average_kernels_for(const c10::Device& device) {
  return device.is_cuda() ? AverageKernels::multi_tensor : AverageKernels::per_tensor;
}

void move_averages(std::vector<at::Tensor>& averages, const std::vector<at::Tensor>& params,
                   const at::Tensor& weight, AverageKernels kernels) {
  if (params.empty()) return;
  at::NoGradGuard no_grad;  // the params require grad; the averages must not join their graph
  if (kernels == AverageKernels::per_tensor) {
    at::_foreach_lerp_(averages, params, std::vector<at::Tensor>(params.size(), weight));
    return;
  }
  // improved-diffusion's update_ema (targ.mul_(rate).add_(src, alpha=1 - rate)), with the rate a
  // tensor: the Tensor overloads of _foreach_mul run one multi-tensor kernel on CUDA.
  at::_foreach_mul_(averages, 1.0 - weight);
  at::_foreach_add_(averages, at::_foreach_mul(params, weight));
}

void update_emas(std::vector<Ema>& emas, const std::vector<at::Tensor>& params, int64_t n,
                 bool warmup, const at::Tensor& skip) {
  if (params.empty()) return;
  const AverageKernels kernels = average_kernels_for(params.front().device());
  const at::Tensor keep = 1.0 - skip;
  for (Ema& e : emas)  // (1 - rate), or 0 on a skipped step
    move_averages(e.params, params, keep * (1.0 - ema_rate_at(e.rate, n, warmup)), kernels);
}

}  // namespace difftrain::train
