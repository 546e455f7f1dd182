#include "model/memory_format.hpp"

namespace difftrain::model {

namespace {

// t with the strides a tensor made in `format` has, as PyTorch's t.to(memory_format=format).
// Not t.contiguous(format): a weight with a dimension of size 1 (a 1-channel model's input conv
// [C, 1, 3, 3], a 1x1 conv [C_out, C_in, 1, 1]) is contiguous in both formats with its
// channels-first strides, so contiguous() keeps them, and from those strides ATen's convolutions
// infer channels-first: a 1-channel model's first activation, and every skip from it, would be
// channels-first in a channels-last network.
at::Tensor in_format(const at::Tensor& t, at::MemoryFormat format) {
  if (t.suggest_memory_format() == format) return t;
  return at::empty_like(t, {}, format).copy_(t);
}

}  // namespace

void to_memory_format(torch::nn::Module& module, at::MemoryFormat format) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters())
    if (p.dim() == 4) p.set_data(in_format(p, format));
  for (auto& b : module.buffers())
    if (b.dim() == 4) b.set_data(in_format(b, format));
}

}  // namespace difftrain::model
