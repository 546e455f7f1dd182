// guided-diffusion's EncoderUNetModel (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec.
// 4): the UNet's input side and middle block, pooled to one logit per class. Trained on noisy
// images x_t, it gives classifier guidance the gradient of log p(y | x_t).
#pragma once

#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include "model/group_norm32.hpp"
#include "model/unet_config.hpp"
#include "model/unet_input_side.hpp"

namespace difftrain::model {

// CLIP's AttentionPool2d as guided-diffusion has it. Children: positional_embedding [C, S^2 + 1],
// qkv_proj Conv1d(C, 3C, 1), c_proj Conv1d(C, out, 1). forward: [N, C, S, S] -> [N, out], the
// output at the prepended mean position, attention with q, k, v split first (QKVAttention).
class AttentionPool2dImpl : public torch::nn::Module {
 public:
  AttentionPool2dImpl(int64_t spatial_size, int64_t channels, int64_t num_heads,
                      int64_t out_channels);
  at::Tensor forward(const at::Tensor& x);

 private:
  int64_t num_heads_;
  at::Tensor positional_embedding_;
  torch::nn::Conv1d qkv_proj_{nullptr}, c_proj_{nullptr};
};
TORCH_MODULE(AttentionPool2d);

// Children, with guided-diffusion's state-dict names: time_embed, input_blocks, middle_block (as
// unet_input_side.hpp builds them), and out:
//   adaptive   [GroupNorm32, SiLU, AdaptiveAvgPool2d(1), zero conv1x1(ch -> classes), Flatten]
//   attention  [GroupNorm32, SiLU, AttentionPool2d(image_size / 2^(levels-1), ch, heads, classes)]
// config.out_channels is the number of classes; config.num_classes must be 0 (the encoder is not
// conditioned on a label).
class EncoderUNetImpl : public torch::nn::Module {
 public:
  // Validates the config (std::invalid_argument naming the field).
  EncoderUNetImpl(UNetConfig config, Pool pool);

  // x [N, in_channels, image_size, image_size], t [N] timesteps as the network sees them. Returns
  // the logits [N, classes] in x's dtype (also under autocast).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t);

  const UNetConfig& config() const { return config_; }
  Pool pool() const { return pool_; }

  // As UNet::to(at::MemoryFormat).
  using torch::nn::Module::to;
  void to(at::MemoryFormat format);

 private:
  UNetConfig config_;
  Pool pool_;
  TimeEmbed time_embed_;
  InputSide input_side_;
  GroupNorm32 out_norm_{nullptr};
  torch::nn::Conv2d out_conv_{nullptr};  // adaptive
  AttentionPool2d attention_pool_{nullptr};
};
TORCH_MODULE(EncoderUNet);

}  // namespace difftrain::model
