// improved-diffusion's ResBlock (with guided-diffusion's up / down variant): a residual block
// conditioned on the timestep (and class) embedding, optionally through scale-shift norm (FiLM;
// Nichol & Dhariwal 2021, sec. 3 / Dhariwal & Nichol 2021, "AdaGN").
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

// guided-diffusion's up / down ResBlocks (resblock_updown): the resolution changes inside the
// block.
enum class Resample { none, up, down };

struct ResBlockOptions {
  int64_t channels;
  int64_t emb_channels;
  int64_t out_channels;
  double dropout = 0.0;
  bool use_scale_shift_norm = true;
  Resample resample = Resample::none;
  bool use_checkpoint = false;  // recompute the block's activations in backward
};

// Children (state-dict names):
//   in_layers       = [GroupNorm32, SiLU, conv3x3(channels -> out)]
//   emb_layers      = [SiLU, Linear(emb -> out, or 2 * out with scale-shift norm)]
//   out_layers      = [GroupNorm32, SiLU, Dropout, zero-initialised conv3x3(out -> out)]
//   skip_connection = conv1x1(channels -> out), only when the channel count changes.
// forward: h = in_layers(x); e = emb_layers(emb)
//   up / down: h = in_conv(resample(SiLU(in_norm(x)))), x = resample(x), where resample is
//   nearest-neighbour x2 or 2x2 average pooling (guided-diffusion's h_upd / x_upd, no parameters)
//   scale-shift: h = out_layers[1:](out_norm(h) * (1 + scale) + shift), [scale, shift] = e
//   additive:    h = out_layers(h + e)
//   return skip(x) + h
// With use_checkpoint, forward keeps none of the block's activations for backward
// (gradient_checkpoint.hpp).
class ResBlockImpl : public torch::nn::Module {
 public:
  explicit ResBlockImpl(const ResBlockOptions& options);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& emb);

 private:
  at::Tensor block(const at::Tensor& x, const at::Tensor& emb);

  bool use_scale_shift_norm_;
  bool use_checkpoint_;
  Resample resample_;
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
