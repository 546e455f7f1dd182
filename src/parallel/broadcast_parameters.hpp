// Rank 0's initial parameters and buffers on every rank, after checking that all ranks built the
// same model.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace difftrain::parallel {

class Communicator;

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

// First all-gathers a signature of every tensor's dtype and shape, and throws on every rank,
// naming the first tensor that differs, when the ranks disagree; then overwrites each tensor with
// `root`'s values (in place: parameters keep their identity, so optimizers and gradient reducers
// built on them stay valid). The tensors must be on the communicator's device.
void broadcast_parameters(Communicator& comm, const std::vector<NamedTensor>& parameters,
                          const std::vector<NamedTensor>& buffers, int root = 0);

}  // namespace difftrain::parallel
