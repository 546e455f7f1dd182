#include "model/encoder_unet.hpp"

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "model/attention.hpp"
#include "model/memory_format.hpp"
#include "model/zero_module.hpp"

namespace difftrain::model {
namespace {

const UNetConfig& validated(const UNetConfig& config) {
  validate(config);
  if (config.num_classes != 0 || config.null_class)
    throw std::invalid_argument(
        "EncoderUNet: num_classes must be 0 (the classifier is not conditioned on a label; its "
        "classes are out_channels)");
  if (config.low_res_size != 0)
    throw std::invalid_argument(
        "EncoderUNet: low_res_size must be 0 (a classifier is not an upsampler)");
  return config;
}

}  // namespace

AttentionPool2dImpl::AttentionPool2dImpl(int64_t spatial_size, int64_t channels, int64_t num_heads,
                                         int64_t out_channels)
    : num_heads_(num_heads),
      positional_embedding_(register_parameter(
          "positional_embedding", at::randn({channels, spatial_size * spatial_size + 1}) /
                                      std::sqrt(static_cast<double>(channels)))),
      qkv_proj_(register_module(
          "qkv_proj", torch::nn::Conv1d(torch::nn::Conv1dOptions(channels, 3 * channels, 1)))),
      c_proj_(register_module(
          "c_proj", torch::nn::Conv1d(torch::nn::Conv1dOptions(channels, out_channels, 1)))) {}

at::Tensor AttentionPool2dImpl::forward(const at::Tensor& x) {
  auto h = x.flatten(2);                               // [N, C, HW]
  h = at::cat({h.mean(-1, /*keepdim=*/true), h}, -1);  // [N, C, HW + 1]
  h = h + positional_embedding_.unsqueeze(0).to(h.dtype());
  h = c_proj_(qkv_attention(qkv_proj_(h), num_heads_, /*new_order=*/true));
  return h.select(2, 0);
}

EncoderUNetImpl::EncoderUNetImpl(UNetConfig config, Pool pool)
    : config_(validated(config)), pool_(pool) {
  const auto& c = config_;
  time_embed_ = register_time_embed(*this, c);
  input_side_ = register_input_side(*this, c);
  const int64_t ch = input_side_.channels;
  out_norm_ = GroupNorm32(ch);
  if (pool == Pool::adaptive) {
    out_conv_ = torch::nn::Conv2d(torch::nn::Conv2dOptions(ch, c.out_channels, 1));
    zero_parameters(*out_conv_);
    register_module("out", torch::nn::Sequential(
                               out_norm_, torch::nn::SiLU(),
                               torch::nn::AdaptiveAvgPool2d(torch::nn::AdaptiveAvgPool2dOptions(1)),
                               out_conv_, torch::nn::Flatten()));
  } else {
    attention_pool_ =
        AttentionPool2d(input_side_.resolution, ch, attention_heads(c, ch), c.out_channels);
    register_module("out", torch::nn::Sequential(out_norm_, torch::nn::SiLU(), attention_pool_));
  }
}

at::Tensor EncoderUNetImpl::forward(const at::Tensor& x, const at::Tensor& t) {
  const auto& c = config_;
  if (x.dim() != 4 || x.size(1) != c.in_channels || x.size(2) != c.image_size ||
      x.size(3) != c.image_size)
    throw std::invalid_argument(c10::str("EncoderUNet input x must have shape [N, ", c.in_channels,
                                         ", ", c.image_size, ", ", c.image_size, "], got ",
                                         x.sizes()));
  if (t.dim() != 1 || t.size(0) != x.size(0))
    throw std::invalid_argument(c10::str("EncoderUNet timesteps t must have shape [", x.size(0),
                                         "] (one per sample), got ", t.sizes()));
  const auto h = out_norm_->forward_silu(run_input_side(input_side_, x, time_embed_(t)));
  const auto logits = pool_ == Pool::adaptive
                          ? out_conv_(h.mean({2, 3}, /*keepdim=*/true)).flatten(1)
                          : attention_pool_(h);
  return logits.to(x.scalar_type());
}

void EncoderUNetImpl::to(at::MemoryFormat format) {
  to_memory_format(*this, format);
}

}  // namespace difftrain::model
