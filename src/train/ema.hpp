// Exponential moving averages of the model weights, one per rate (e.g. 0.9999).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

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

// How averages move. A 0-dim weight tensor for every parameter sends _foreach_lerp_ down its
// per-tensor path on CUDA, one lerp kernel per parameter (446 for the CIFAR-10 model, for each
// average), so CUDA takes three multi-tensor kernels instead. On the CPU every foreach op loops
// over the tensors anyway, and one lerp each reads and writes the least.
enum class AverageKernels { per_tensor, multi_tensor };
AverageKernels average_kernels_for(const c10::Device& device);

// averages <- (1 - weight) averages + weight params, pair by pair. `weight` is a 0-dim tensor of
// the averages' dtype on their device, so that a skipped step (weight 0) is decided there. Both
// kinds are exact at weight 0 (the averages unchanged) and 1 (the params).
void move_averages(std::vector<at::Tensor>& averages, const std::vector<at::Tensor>& params,
                   const at::Tensor& weight, AverageKernels kernels);

// ema <- rate * ema + (1 - rate) * params (move_averages); a no-op when `skip` (a 0-dim float32 on
// the device, 0 or 1) is 1, decided on the device.
void update_emas(std::vector<Ema>& emas, const std::vector<at::Tensor>& params, int64_t n,
                 bool warmup, const at::Tensor& skip);

}  // namespace difftrain::train
