#include "weights/conformance.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

namespace difftrain::weights {

StateDict conformance_batch(const train::Denoiser& denoiser, int64_t num_timesteps) {
  constexpr int64_t kBatch = 4;
  constexpr uint64_t kSeed = 20210218;  // fixed: the same x for every export of a config
  const model::UNetConfig& c = denoiser.net->config();
  auto g = at::make_generator<at::CPUGeneratorImpl>(kSeed);
  const at::Tensor x =
      at::randn({kBatch, c.in_channels, c.image_size, c.image_size}, g, at::kFloat);
  const int64_t T = num_timesteps;
  const at::Tensor timesteps = at::tensor({int64_t{0}, T / 3, 2 * T / 3, T - 1}, at::kLong);
  // What the network receives (improved-diffusion's _scale_timesteps), recorded for others.
  const at::Tensor t = timesteps.to(at::kFloat) * denoiser.timestep_scale;
  at::Tensor y;
  if (c.num_classes > 0) y = at::arange(kBatch, at::kLong).remainder(c.num_classes);
  at::Tensor low_res;
  if (c.low_res_size > 0)
    low_res =
        at::rand({kBatch, c.in_channels, c.low_res_size, c.low_res_size}, g, at::kFloat) * 2 - 1;

  torch::NoGradGuard no_grad;
  at::Tensor out = denoiser(x, timesteps, y, low_res).contiguous();
  StateDict batch{{"x", x}, {"timesteps", timesteps}, {"t", t}};
  if (y.defined()) batch.push_back({"y", y});
  if (low_res.defined()) batch.push_back({"low_res", low_res});
  batch.push_back({"out", out});
  return batch;
}

}  // namespace difftrain::weights
