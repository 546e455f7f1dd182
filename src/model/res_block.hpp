// improved-diffusion's ResBlock: a residual block conditioned on the timestep (and class)
// embedding, optionally through scale-shift norm (FiLM; Nichol & Dhariwal 2021, sec. 3 /
// Dhariwal & Nichol 2021, "AdaGN").
#pragma once

#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "model/group_norm32.hpp"

namespace difftrain::model {

struct ResBlockOptions {
  int64_t channels;
  int64_t emb_channels;
  int64_t out_channels;
  double dropout = 0.0;
  bool use_scale_shift_norm = true;
};

// Children (state-dict names):
//   in_layers       = [GroupNorm32, SiLU, conv3x3(channels -> out)]
//   emb_layers      = [SiLU, Linear(emb -> out, or 2 * out with scale-shift norm)]
//   out_layers      = [GroupNorm32, SiLU, Dropout, zero-initialised conv3x3(out -> out)]
//   skip_connection = conv1x1(channels -> out), only when the channel count changes.
// forward: h = in_layers(x); e = emb_layers(emb)
//   scale-shift: h = out_layers[1:](out_norm(h) * (1 + scale) + shift), [scale, shift] = e
//   additive:    h = out_layers(h + e)
//   return skip(x) + h
class ResBlockImpl : public torch::nn::Module {
 public:
  explicit ResBlockImpl(const ResBlockOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& emb);

 private:
  bool use_scale_shift_norm_;
  GroupNorm32 in_norm_{nullptr};
  torch::nn::Conv2d in_conv_{nullptr};
  torch::nn::Linear emb_linear_{nullptr};
  GroupNorm32 out_norm_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Conv2d out_conv_{nullptr};
  torch::nn::Conv2d skip_connection_{nullptr};  // empty: identity
};
TORCH_MODULE(ResBlock);

}  // namespace difftrain::model
