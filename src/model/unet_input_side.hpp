// The half of improved-diffusion's UNetModel that guided-diffusion's EncoderUNetModel (the noisy
// classifier of Dhariwal & Nichol 2021) shares with it: the timestep-embedding MLP, the input
// blocks and the middle block, built alike and named alike in both.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "model/attention.hpp"
#include "model/res_block.hpp"
#include "model/timestep_embed_sequential.hpp"
#include "model/unet_config.hpp"

namespace difftrain::model {

// time_embed = [Linear(ch, 4ch), SiLU, Linear(4ch, 4ch)] on timestep_embedding(t, ch).
struct TimeEmbed {
  torch::nn::Linear in{nullptr}, out{nullptr};
  // The float32 sinusoidal embedding in the weights' dtype, so a float64 model works too.
  at::Tensor operator()(const at::Tensor& t);
};
// Registers `name` ("time_embed", or an upsampler's "low_res_noise_embed") on `parent`.
TimeEmbed register_time_embed(torch::nn::Module& parent, const UNetConfig& c,
                              const std::string& name = "time_embed");

// Whether blocks at this feature-map size have attention (config.attention_resolutions).
bool has_attention(const UNetConfig& c, int64_t resolution);

// A ResBlock of this config (embedding 4 * model_channels, its dropout and norm).
ResBlock make_res_block(const UNetConfig& c, int64_t channels, int64_t out_channels,
                        Resample resample = Resample::none);
// An AttentionBlock of this config (its heads and head order) over `channels`.
AttentionBlock make_attention(const UNetConfig& c, int64_t channels);

struct InputSide {
  std::vector<TimestepEmbedSequential> input_blocks;
  TimestepEmbedSequential middle_block{nullptr};
  std::vector<int64_t> input_block_chans;  // each input block's output channels, in order
  int64_t channels = 0;                    // of the middle block's output
  int64_t resolution = 0;                  // its feature-map size
};

// Registers "input_blocks" and "middle_block" on `parent`:
//   input_blocks  0: conv3x3(stem_in_channels -> level_channels(0)); then per level, num_res_blocks
//   x
//                 [ResBlock (+ AttentionBlock at attention_resolutions)], and a Downsample
//                 between levels (a down ResBlock with resblock_updown)
//   middle_block  [ResBlock, AttentionBlock, ResBlock]
// The stem has level 0's channels, as in guided-diffusion's UNet and encoder (improved-diffusion's
// UNet gives it model_channels, the same for the channel_mult[0] = 1 it builds).
InputSide register_input_side(torch::nn::Module& parent, const UNetConfig& c);

// Runs the input blocks and the middle block; `skips` (when given) receives every input block's
// output, the skip connections of the UNet's output side.
at::Tensor run_input_side(InputSide& side, const at::Tensor& x, const at::Tensor& emb,
                          std::vector<at::Tensor>* skips = nullptr);

}  // namespace difftrain::model
