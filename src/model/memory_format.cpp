#include "model/memory_format.hpp"

namespace difftrain::model {

void to_memory_format(torch::nn::Module& module, at::MemoryFormat format) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters())
    if (p.dim() == 4) p.set_data(p.contiguous(format));
  for (auto& b : module.buffers())
    if (b.dim() == 4) b.set_data(b.contiguous(format));
}

}  // namespace difftrain::model
