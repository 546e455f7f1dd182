#include "model/unet_input_side.hpp"

#include <algorithm>

#include "model/resample.hpp"
#include "model/timestep_embedding.hpp"

namespace difftrain::model {
bool has_attention(const UNetConfig& c, int64_t resolution) {
  const auto& res = c.attention_resolutions;
  return std::find(res.begin(), res.end(), resolution) != res.end();
}

at::Tensor TimeEmbed::operator()(const at::Tensor& t) {
  const auto t_emb = timestep_embedding(t, in->options.in_features()).to(in->weight.dtype());
  return out(at::silu(in(t_emb)));
}

TimeEmbed register_time_embed(torch::nn::Module& parent, const UNetConfig& c,
                              const std::string& name) {
  const int64_t time_embed_dim = 4 * c.model_channels;
  TimeEmbed embed{torch::nn::Linear(c.model_channels, time_embed_dim),
                  torch::nn::Linear(time_embed_dim, time_embed_dim)};
  parent.register_module(name, torch::nn::Sequential(embed.in, torch::nn::SiLU(), embed.out));
  return embed;
}

ResBlock make_res_block(const UNetConfig& c, int64_t channels, int64_t out_channels,
                        Resample resample) {
  return ResBlock(ResBlockOptions{.channels = channels,
                                  .emb_channels = 4 * c.model_channels,
                                  .out_channels = out_channels,
                                  .dropout = c.dropout,
                                  .use_scale_shift_norm = c.use_scale_shift_norm,
                                  .resample = resample,
                                  .use_checkpoint = c.use_checkpoint});
}

AttentionBlock make_attention(const UNetConfig& c, int64_t channels) {
  return AttentionBlock(channels, attention_heads(c, channels), c.use_new_attention_order,
                        c.use_checkpoint);
}

InputSide register_input_side(torch::nn::Module& parent, const UNetConfig& c) {
  InputSide side;
  auto input_blocks = parent.register_module("input_blocks", torch::nn::ModuleList());
  const auto add_input_block = [&](TimestepEmbedSequential block, int64_t channels) {
    input_blocks->push_back(block);
    side.input_blocks.push_back(block);
    side.input_block_chans.push_back(channels);
  };
  const int64_t stem_channels = level_channels(c, 0);
  TimestepEmbedSequential stem;
  stem->push_back(torch::nn::Conv2d(
      torch::nn::Conv2dOptions(stem_in_channels(c), stem_channels, 3).padding(1)));
  add_input_block(stem, stem_channels);
  int64_t ch = stem_channels;
  int64_t resolution = c.image_size;
  const auto levels = static_cast<int64_t>(c.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t level_ch = level_channels(c, static_cast<size_t>(level));
    for (int64_t i = 0; i < c.num_res_blocks; ++i) {
      TimestepEmbedSequential block;
      block->push_back(make_res_block(c, ch, level_ch));
      ch = level_ch;
      if (has_attention(c, resolution)) block->push_back(make_attention(c, ch));
      add_input_block(block, ch);
    }
    if (level != levels - 1) {
      TimestepEmbedSequential block;
      if (c.resblock_updown)
        block->push_back(make_res_block(c, ch, ch, Resample::down));
      else
        block->push_back(Downsample(ch, c.conv_resample));
      add_input_block(block, ch);
      resolution /= 2;
    }
  }

  side.middle_block = parent.register_module("middle_block", TimestepEmbedSequential());
  side.middle_block->push_back(make_res_block(c, ch, ch));
  side.middle_block->push_back(make_attention(c, ch));
  side.middle_block->push_back(make_res_block(c, ch, ch));
  side.channels = ch;
  side.resolution = resolution;
  return side;
}

at::Tensor run_input_side(InputSide& side, const at::Tensor& x, const at::Tensor& emb,
                          std::vector<at::Tensor>* skips) {
  auto h = x;
  for (auto& block : side.input_blocks) {
    h = block->forward(h, emb);
    if (skips) skips->push_back(h);
  }
  return side.middle_block->forward(h, emb);
}

}  // namespace difftrain::model
