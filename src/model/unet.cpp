#include "model/unet.hpp"

#include <stdexcept>

#include "model/memory_format.hpp"
#include "model/resample.hpp"
#include "model/zero_module.hpp"

namespace difftrain::model {
namespace {

const UNetConfig& validated(const UNetConfig& config) {
  validate(config);
  return config;
}

torch::nn::Conv2d conv3x3(int64_t in, int64_t out) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
}

}  // namespace

UNetImpl::UNetImpl(UNetConfig config) : config_(validated(config)) {
  const auto& c = config_;
  time_embed_ = register_time_embed(*this, c);
  if (c.low_res_noise) low_res_noise_embed_ = register_time_embed(*this, c, "low_res_noise_embed");
  if (c.num_classes > 0)
    label_emb_ = register_module(
        "label_emb",
        torch::nn::Embedding(c.num_classes + (c.null_class ? 1 : 0), 4 * c.model_channels));
  input_side_ = register_input_side(*this, c);

  // Output side: input_block_chans, consumed last first, are the skip connections' channels.
  std::vector<int64_t> input_block_chans = input_side_.input_block_chans;
  int64_t ch = input_side_.channels;
  int64_t resolution = input_side_.resolution;
  const auto levels = static_cast<int64_t>(c.channel_mult.size());
  auto output_blocks = register_module("output_blocks", torch::nn::ModuleList());
  for (int64_t level = levels - 1; level >= 0; --level) {
    const int64_t level_ch = level_channels(c, static_cast<size_t>(level));
    for (int64_t i = 0; i <= c.num_res_blocks; ++i) {
      TimestepEmbedSequential block;
      block->push_back(make_res_block(c, ch + input_block_chans.back(), level_ch));
      input_block_chans.pop_back();
      ch = level_ch;
      if (has_attention(c, resolution)) block->push_back(make_attention(c, ch));
      if (level > 0 && i == c.num_res_blocks) {
        if (c.resblock_updown)
          block->push_back(make_res_block(c, ch, ch, Resample::up));
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

at::Tensor UNetImpl::forward(const at::Tensor& x, const at::Tensor& t, const at::Tensor& y,
                             const at::Tensor& low_res, const at::Tensor& low_res_t) {
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

  if (c.low_res_size == 0 && low_res.defined())
    throw std::invalid_argument(
        "UNet got a low-resolution image, but the model is not an upsampler (low_res_size = 0)");
  if (c.low_res_size > 0 && (!low_res.defined() || low_res.dim() != 4 ||
                             low_res.size(0) != x.size(0) || low_res.size(1) != c.in_channels))
    throw std::invalid_argument(c10::str(
        "UNet is an upsampler (low_res_size = ", c.low_res_size,
        ") and needs a low-resolution image of shape [", x.size(0), ", ", c.in_channels,
        ", h, w], got ", low_res.defined() ? c10::str(low_res.sizes()) : std::string("none")));

  if (!c.low_res_noise && low_res_t.defined())
    throw std::invalid_argument(
        "UNet got a noise level of its low-resolution image, but the model is not conditioned "
        "on one (low_res_noise = false)");
  if (c.low_res_noise &&
      (!low_res_t.defined() || low_res_t.dim() != 1 || low_res_t.size(0) != x.size(0)))
    throw std::invalid_argument(c10::str(
        "UNet is conditioned on its low-resolution image's noise level (low_res_noise) and "
        "needs one level per sample, shape [",
        x.size(0), "], got ", low_res_t.defined() ? c10::str(low_res_t.sizes()) : "none"));

  // SuperResModel.forward: the upsampled image as extra input channels.
  const at::Tensor input =
      low_res.defined()
          ? at::cat({x, at::upsample_bilinear2d(low_res.to(x.scalar_type()), {x.size(2), x.size(3)},
                                                /*align_corners=*/false)},
                    1)
          : x;
  auto emb = time_embed_(t);
  if (label_emb_) emb = emb + label_emb_(y);
  if (low_res_noise_embed_) emb = emb + (*low_res_noise_embed_)(low_res_t);

  std::vector<at::Tensor> hs;
  hs.reserve(input_side_.input_blocks.size());
  auto h = run_input_side(input_side_, input, emb, &hs);
  for (auto& block : output_blocks_) {
    h = block->forward(at::cat({h, hs.back()}, 1), emb);
    hs.pop_back();
  }
  return out_conv_(out_norm_->forward_silu(h)).to(x.scalar_type());
}

void UNetImpl::to(at::MemoryFormat format) {
  to_memory_format(*this, format);
}

}  // namespace difftrain::model
