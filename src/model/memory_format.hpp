// Converting a module's weights to a memory format: LibTorch's analogue of PyTorch's
// module.to(memory_format=torch.channels_last).
#pragma once

#include <c10/core/MemoryFormat.h>
#include <torch/nn/module.h>

namespace difftrain::model {

// Re-lays out, in place, every 4-d parameter and buffer (the conv2d weights) in `format`
// (ChannelsLast or Contiguous); other tensors are left alone, as in PyTorch. Values, tensor
// identities and autograd leaves are unchanged, so an optimizer built before still applies.
// Together with x.contiguous(at::MemoryFormat::ChannelsLast) on the input, the convolutions run
// in NHWC, usually faster on CPU (oneDNN) and with tensor cores.
void to_memory_format(torch::nn::Module& module, at::MemoryFormat format);

}  // namespace difftrain::model
