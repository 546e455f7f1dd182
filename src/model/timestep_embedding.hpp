// Sinusoidal timestep embedding (Vaswani et al. 2017, as improved-diffusion's nn.py
// `timestep_embedding`).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace difftrain::model {

// timesteps [N] (any numeric dtype; fractional steps allowed) -> [N, dim] float32:
//   freq_i = max_period^(-i / half), i = 0..half-1, half = dim / 2,
//   emb = [cos(t * freq_0..half-1), sin(t * freq_0..half-1)], zero-padded when dim is odd.
at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim,
                              double max_period = 10000.0);

}  // namespace difftrain::model
