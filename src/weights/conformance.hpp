// The conformance vector: a fixed input to the network (x, the timesteps as the network receives
// them, class labels) and difftrain's output for it. Another implementation of the network
// (improved-diffusion, a port to JAX) checks itself by reproducing the output.
#pragma once

#include <cstdint>

#include "train/denoiser.hpp"
#include "weights/state_dict.hpp"

namespace difftrain::weights {

// Four images of N(0, 1) noise from a fixed seed, at timesteps 0, T/3, 2T/3 and T-1 ("timesteps",
// int64) multiplied by the denoiser's timestep scale ("t", float32: what the network sees),
// labels 0..3 modulo the classes ("y", conditional models only), and "out" = the network's
// output in fp32 on the CPU. The network must be in eval mode (dropout off).
StateDict conformance_batch(const train::Denoiser& denoiser, int64_t num_timesteps);

}  // namespace difftrain::weights
