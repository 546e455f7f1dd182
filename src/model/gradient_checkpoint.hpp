// Gradient checkpointing (improved-diffusion's `checkpoint(func, inputs, params, flag)`; Chen et
// al. 2016, "Training deep nets with sublinear memory cost"): a block's forward keeps none of its
// activations for backward, and backward runs the block's forward again to get them. It trades
// one more forward of the block for the memory of its activations.
#pragma once

#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

namespace difftrain::model {

using CheckpointedBlock = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

// block(inputs), differentiable with respect to the inputs that require grad and to `params` (the
// block's parameters), without keeping block's intermediate tensors. The recomputation sees what
// the forward saw: the same inputs, the default generator of their device in the same state (so
// that dropout draws the same mask), and the same autocast state; and it leaves the generator as
// the backward found it. Where no gradient is recorded (no_grad, or nothing requires grad) it is
// block(inputs).
at::Tensor gradient_checkpoint(CheckpointedBlock block, std::vector<at::Tensor> inputs,
                               const std::vector<at::Tensor>& params);

}  // namespace difftrain::model
