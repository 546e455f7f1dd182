#include "model/unet.hpp"

#include <algorithm>
#include <stdexcept>

#include "model/attention.hpp"
#include "model/memory_format.hpp"
#include "model/res_block.hpp"
#include "model/resample.hpp"
#include "model/timestep_embedding.hpp"
#include "model/zero_module.hpp"

namespace difftrain::model {
namespace {

const UNetConfig& validated(const UNetConfig& config) {
  validate(config);
  return config;
}

bool has_attention(const UNetConfig& c, int64_t resolution) {
  const auto& res = c.attention_resolutions;
  return std::find(res.begin(), res.end(), resolution) != res.end();
}

torch::nn::Conv2d conv3x3(int64_t in, int64_t out) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
}

}  // namespace

UNetImpl::UNetImpl(UNetConfig config) : config_(validated(config)) {
  const auto& c = config_;
  const int64_t time_embed_dim = 4 * c.model_channels;
  const auto res_block = [&](int64_t channels, int64_t out_channels,
                             Resample resample = Resample::none) {
    return ResBlock(ResBlockOptions{.channels = channels,
                                    .emb_channels = time_embed_dim,
                                    .out_channels = out_channels,
                                    .dropout = c.dropout,
                                    .use_scale_shift_norm = c.use_scale_shift_norm,
                                    .resample = resample});
  };
  const auto attention = [&](int64_t channels) {
    return AttentionBlock(channels, attention_heads(c, channels), c.use_new_attention_order);
  };

  time_embed_in_ = torch::nn::Linear(c.model_channels, time_embed_dim);
  time_embed_out_ = torch::nn::Linear(time_embed_dim, time_embed_dim);
  register_module("time_embed",
                  torch::nn::Sequential(time_embed_in_, torch::nn::SiLU(), time_embed_out_));
  if (c.num_classes > 0)
    label_emb_ = register_module(
        "label_emb", torch::nn::Embedding(c.num_classes + (c.null_class ? 1 : 0), time_embed_dim));

  // Input side. input_block_chans records each block's output channels: the skip connections
  // the output side consumes, last first.
  auto input_blocks = register_module("input_blocks", torch::nn::ModuleList());
  const auto add_input_block = [&](TimestepEmbedSequential block) {
    input_blocks->push_back(block);
    input_blocks_.push_back(block);
  };
  TimestepEmbedSequential stem;
  stem->push_back(conv3x3(c.in_channels, c.model_channels));
  add_input_block(stem);
  std::vector<int64_t> input_block_chans{c.model_channels};
  int64_t ch = c.model_channels;
  int64_t resolution = c.image_size;
  const auto levels = static_cast<int64_t>(c.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t level_ch = c.channel_mult[level] * c.model_channels;
    for (int64_t i = 0; i < c.num_res_blocks; ++i) {
      TimestepEmbedSequential block;
      block->push_back(res_block(ch, level_ch));
      ch = level_ch;
      if (has_attention(c, resolution)) block->push_back(attention(ch));
      add_input_block(block);
      input_block_chans.push_back(ch);
    }
    if (level != levels - 1) {
      TimestepEmbedSequential block;
      if (c.resblock_updown)
        block->push_back(res_block(ch, ch, Resample::down));
      else
        block->push_back(Downsample(ch, c.conv_resample));
      add_input_block(block);
      input_block_chans.push_back(ch);
      resolution /= 2;
    }
  }

  middle_block_ = register_module("middle_block", TimestepEmbedSequential());
  middle_block_->push_back(res_block(ch, ch));
  middle_block_->push_back(attention(ch));
  middle_block_->push_back(res_block(ch, ch));

  auto output_blocks = register_module("output_blocks", torch::nn::ModuleList());
  for (int64_t level = levels - 1; level >= 0; --level) {
    const int64_t level_ch = c.channel_mult[level] * c.model_channels;
    for (int64_t i = 0; i <= c.num_res_blocks; ++i) {
      TimestepEmbedSequential block;
      block->push_back(res_block(ch + input_block_chans.back(), level_ch));
      input_block_chans.pop_back();
      ch = level_ch;
      if (has_attention(c, resolution)) block->push_back(attention(ch));
      if (level > 0 && i == c.num_res_blocks) {
        if (c.resblock_updown)
          block->push_back(res_block(ch, ch, Resample::up));
        else
          block->push_back(Upsample(ch, c.conv_resample));
        resolution *= 2;
      }
      output_blocks->push_back(block);
      output_blocks_.push_back(block);
    }
  }

  out_norm_ = GroupNorm32(ch);
  out_conv_ = conv3x3(ch, c.out_channels);
  zero_parameters(*out_conv_);
  register_module("out", torch::nn::Sequential(out_norm_, torch::nn::SiLU(), out_conv_));
}

at::Tensor UNetImpl::forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y) {
  const auto& c = config_;
  const int64_t factor = int64_t{1} << (c.channel_mult.size() - 1);
  if (x.dim() != 4 || x.size(1) != c.in_channels || x.size(2) % factor || x.size(3) % factor)
    throw std::invalid_argument(c10::str("UNet input x must have shape [N, ", c.in_channels,
                                         ", H, W] with H and W divisible by ", factor, ", got ",
                                         x.sizes()));
  if (t.dim() != 1 || t.size(0) != x.size(0))
    throw std::invalid_argument(c10::str("UNet timesteps t must have shape [", x.size(0),
                                         "] (one per sample), got ", t.sizes()));
  if (c.num_classes == 0 && y.defined())
    throw std::invalid_argument(
        "UNet got class labels y, but the model is unconditional (num_classes = 0)");
  if (c.num_classes > 0 && (!y.defined() || y.dim() != 1 || y.size(0) != x.size(0) ||
                            at::isFloatingType(y.scalar_type())))
    throw std::invalid_argument(
        c10::str("UNet is class-conditional (num_classes = ", c.num_classes,
                 ") and needs integer class labels y of shape [", x.size(0), "], got ",
                 y.defined() ? c10::str(y.scalar_type(), y.sizes()) : std::string("none")));

  // The float32 embedding in the weights' dtype, so a float64 model works too.
  const auto t_emb = timestep_embedding(t, c.model_channels).to(time_embed_in_->weight.dtype());
  auto emb = time_embed_out_(at::silu(time_embed_in_(t_emb)));
  if (label_emb_) emb = emb + label_emb_(y);

  std::vector<at::Tensor> hs;
  hs.reserve(input_blocks_.size());
  auto h = x;
  for (auto& block : input_blocks_) {
    h = block->forward(h, emb);
    hs.push_back(h);
  }
  h = middle_block_->forward(h, emb);
  for (auto& block : output_blocks_) {
    h = block->forward(at::cat({h, hs.back()}, 1), emb);
    hs.pop_back();
  }
  return out_conv_(at::silu(out_norm_(h))).to(x.scalar_type());
}

void UNetImpl::to(at::MemoryFormat format) {
  to_memory_format(*this, format);
}

}  // namespace difftrain::model
