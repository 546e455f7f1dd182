// Data parallelism is correct only while every rank holds the same model: the same parameters,
// optimizer moments and timestep-sampler state after every step. A silent divergence (a rank
// that skipped a step, a non-deterministic reduction) shows up as worse results much later, so
// training.check_replicas_every compares an exact fingerprint of that state across ranks.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace difftrain::parallel {
class Communicator;
}

namespace difftrain::train {

// CRC-32 of the bytes of every tensor, in order (host copies of device tensors).
uint32_t fingerprint(const std::vector<at::Tensor>& tensors);

// The ranks whose fingerprint differs from rank 0's (empty when every rank agrees): one
// all-gather of the fingerprints.
std::vector<int> diverged_ranks(const std::vector<at::Tensor>& tensors,
                                parallel::Communicator& comm);

}  // namespace difftrain::train
