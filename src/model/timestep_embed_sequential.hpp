// improved-diffusion's TimestepEmbedSequential: a sequence of blocks in which the blocks that use
// the timestep embedding (ResBlocks) are called as block(x, emb) and the others as block(x).
// Children are named "0", "1", ... like nn.Sequential's, so parameter names match
// improved-diffusion's state dict (input_blocks.1.0.in_layers.0.weight).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace difftrain::model {

class TimestepEmbedSequentialImpl : public torch::nn::Module {
 public:
  // `block` is a module holder (torch::nn::Conv2d, ResBlock, ...).
  template <typename Holder>
  void push_back(Holder block) {
    register_module(std::to_string(layers_.size()), block);
    if constexpr (requires(const at::Tensor& x) { block->forward(x, x); })
      layers_.emplace_back([block](const at::Tensor& x, const at::Tensor& emb) mutable {
        return block->forward(x, emb);
      });
    else
      layers_.emplace_back(
          [block](const at::Tensor& x, const at::Tensor&) mutable { return block->forward(x); });
  }

  at::Tensor forward(at::Tensor x, const at::Tensor& emb) {
    for (const auto& layer : layers_)
      x = layer(x, emb);
    return x;
  }

  size_t size() const { return layers_.size(); }

 private:
  std::vector<std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>> layers_;
};
TORCH_MODULE(TimestepEmbedSequential);

}  // namespace difftrain::model
