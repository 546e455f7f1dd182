// The UNet of Improved DDPM (Nichol & Dhariwal 2021; improved-diffusion's unet.py UNetModel), with
// guided-diffusion's resblock_updown and use_new_attention_order (Dhariwal & Nichol 2021).
#pragma once

#include <optional>
#include <vector>

#include <c10/core/MemoryFormat.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "model/group_norm32.hpp"
#include "model/timestep_embed_sequential.hpp"
#include "model/unet_config.hpp"
#include "model/unet_input_side.hpp"

namespace difftrain::model {

// An upsampler (low_res_size > 0, guided-diffusion's SuperResModel) first concatenates to x its
// low-resolution image, bilinearly upsampled to x's size (F.interpolate's "bilinear", corners
// not aligned): the network sees [x, up(low_res)].
// Children, in improved-diffusion's order and with its state-dict names:
//   time_embed    [Linear(ch, 4ch), SiLU, Linear(4ch, 4ch)] on timestep_embedding(t, ch)
//   label_emb     Embedding(num_classes (+ 1 with null_class), 4ch), added to the time
//                 embedding (conditional only)
//   low_res_noise_embed  as time_embed, on the low-resolution image's noise level, added to the
//                 time embedding (low_res_noise only; not in improved-diffusion)
//   input_blocks, middle_block  as unet_input_side.hpp builds them (stem: level 0's channels)
//   output_blocks per level from the deepest, num_res_blocks + 1 x [ResBlock on the concatenation
//                 with the matching input block's output (+ AttentionBlock)], the last one of a
//                 level followed by an Upsample (an up ResBlock with resblock_updown; except at
//                 full resolution)
//   out           [GroupNorm32, SiLU, zero-initialised conv3x3(level 0's channels -> out_channels)]
// ch = model_channels; the channels of level l are model_channels * channel_mult[l]
// (level_channels).
class UNetImpl : public torch::nn::Module {
 public:
  // Validates the config (std::invalid_argument naming the field).
  explicit UNetImpl(UNetConfig config);

  // x [N, in_channels, H, W] (H, W divisible by 2^(levels - 1); the attention levels are set by
  // image_size), t [N] timesteps (integer or fractional), y [N] int64 class labels, required iff
  // num_classes > 0 (label num_classes is the null label of a null_class model), low_res [N,
  // in_channels, h, w] the low-resolution image, required iff low_res_size > 0, low_res_t [N]
  // its noise level on t's scale, required iff low_res_noise. Returns [N, out_channels, H, W] in
  // x's dtype (also under autocast).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y = {},
                     const at::Tensor& low_res = {}, const at::Tensor& low_res_t = {});

  const UNetConfig& config() const { return config_; }

  // PyTorch's model.to(memory_format=...): re-lays out the conv weights in place (see
  // to_memory_format). Convolutions follow channels-last weights even for a contiguous x.
  using torch::nn::Module::to;
  void to(at::MemoryFormat format);

 private:
  UNetConfig config_;
  TimeEmbed time_embed_;
  std::optional<TimeEmbed> low_res_noise_embed_;
  torch::nn::Embedding label_emb_{nullptr};
  InputSide input_side_;
  std::vector<TimestepEmbedSequential> output_blocks_;
  GroupNorm32 out_norm_{nullptr};
  torch::nn::Conv2d out_conv_{nullptr};
};
TORCH_MODULE(UNet);

}  // namespace difftrain::model
