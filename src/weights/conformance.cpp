#include "weights/conformance.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

namespace difftrain::weights {

StateDict conformance_batch(model::UNetImpl& net, int64_t num_timesteps, double timestep_scale) {
  constexpr int64_t kBatch = 4;
  constexpr uint64_t kSeed = 20210218;  // fixed: the same x for every export of a config
  const model::UNetConfig& c = net.config();
  auto g = at::make_generator<at::CPUGeneratorImpl>(kSeed);
  const at::Tensor x =
      at::randn({kBatch, c.in_channels, c.image_size, c.image_size}, g, at::kFloat);
  const int64_t T = num_timesteps;
  const at::Tensor timesteps = at::tensor({int64_t{0}, T / 3, 2 * T / 3, T - 1}, at::kLong);
  // As training and sampling compute it (and improved-diffusion's _scale_timesteps).
  const at::Tensor t = timesteps.to(at::kFloat) * timestep_scale;
  at::Tensor y;
  if (c.num_classes > 0) y = at::arange(kBatch, at::kLong).remainder(c.num_classes);

  torch::NoGradGuard no_grad;
  at::Tensor out = net.forward(x, t, y).contiguous();
  StateDict batch{{"x", x}, {"timesteps", timesteps}, {"t", t}};
  if (y.defined()) batch.push_back({"y", y});
  batch.push_back({"out", out});
  return batch;
}

}  // namespace difftrain::weights
