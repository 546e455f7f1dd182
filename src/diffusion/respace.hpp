// Sampling with fewer steps than training (Nichol & Dhariwal 2021, §4; improved-diffusion's
// respace.py): keep a subset S of the T timesteps and rebuild the diffusion from the betas that
// give the same alphas_cumprod at the kept steps, beta_i = 1 - abar_{s_i} / abar_{s_{i-1}}.
// Every table, the learned-range variance interpolation included, is then derived from those
// betas as for any diffusion. The network still sees the original timestep s_i.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "diffusion/bound.hpp"
#include "diffusion/schedule.hpp"

namespace difftrain::diffusion {

// The kept timesteps, ascending, as improved-diffusion's space_timesteps:
//   "ddimK"    every stride-th step from 0, the stride that gives exactly K steps
//   "K"        K steps spread evenly over [0, T-1], both ends included
//   "K1,K2,.." T cut into as many equal sections (the first T mod n one longer), K_i steps spread
//              evenly over section i
// Fractional positions are rounded half to even, as Python's round(). Throws std::invalid_argument
// naming the spec when it does not parse, asks for more steps than a section has, or keeps fewer
// than 2 steps (the clipped posterior log-variance needs t = 1).
std::vector<long> space_timesteps(long num_timesteps, const std::string& spec);

struct RespacedDiffusion {
  GaussianDiffusion diffusion;  // indexed by i = 0..K-1
  at::Tensor timestep_map;      // [K] int64, CPU: the original timestep of index i
};

// use_timesteps: ascending, distinct, within [0, T). The mean and variance types are the base's.
RespacedDiffusion respace(const GaussianDiffusion& base, const std::vector<long>& use_timesteps);

// The network of the base diffusion seen from the respaced one: index i -> timestep_map[i].
ModelFn respaced_model(const ModelFn& base_model, const at::Tensor& timestep_map);

}  // namespace difftrain::diffusion
