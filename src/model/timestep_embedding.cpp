#include "model/timestep_embedding.hpp"

#include <cmath>
#include <stdexcept>

namespace difftrain::model {

at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, double max_period) {
  if (timesteps.dim() != 1)
    throw std::invalid_argument(c10::str("timesteps must have shape [N], got ", timesteps.sizes()));
  const int64_t half = dim / 2;
  const auto f32 = timesteps.options().dtype(at::kFloat);
  const auto freqs = at::exp(-std::log(max_period) * at::arange(half, f32) / half);
  const auto args = timesteps.to(at::kFloat).unsqueeze(1) * freqs.unsqueeze(0);
  auto embedding = at::cat({at::cos(args), at::sin(args)}, -1);
  if (dim % 2) embedding = at::cat({embedding, at::zeros_like(embedding.narrow(1, 0, 1))}, -1);
  return embedding;
}

}  // namespace difftrain::model
