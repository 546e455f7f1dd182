#include "model/res_block.hpp"

#include "model/gradient_checkpoint.hpp"
#include "model/resample.hpp"
#include "model/zero_module.hpp"

namespace difftrain::model {
namespace {

torch::nn::Conv2d conv3x3(int64_t in, int64_t out) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
}

at::Tensor resampled(const at::Tensor& x, Resample r) {
  switch (r) {
    case Resample::up:
      return upsample_nearest_x2(x);
    case Resample::down:
      return avg_pool_x2(x);
    case Resample::none:
      break;
  }
  return x;
}

}  // namespace

ResBlockImpl::ResBlockImpl(const ResBlockOptions& o)
    : use_scale_shift_norm_(o.use_scale_shift_norm),
      use_checkpoint_(o.use_checkpoint),
      resample_(o.resample),
      in_norm_(o.channels),
      in_conv_(conv3x3(o.channels, o.out_channels)),
      emb_linear_(o.emb_channels, o.use_scale_shift_norm ? 2 * o.out_channels : o.out_channels),
      out_norm_(o.out_channels),
      dropout_(o.dropout),
      out_conv_(conv3x3(o.out_channels, o.out_channels)) {
  zero_parameters(*out_conv_);
  // The Sequentials exist for the state-dict names; forward calls the layers directly.
  register_module("in_layers", torch::nn::Sequential(in_norm_, torch::nn::SiLU(), in_conv_));
  register_module("emb_layers", torch::nn::Sequential(torch::nn::SiLU(), emb_linear_));
  register_module("out_layers",
                  torch::nn::Sequential(out_norm_, torch::nn::SiLU(), dropout_, out_conv_));
  if (o.out_channels != o.channels)
    skip_connection_ =
        register_module("skip_connection",
                        torch::nn::Conv2d(torch::nn::Conv2dOptions(o.channels, o.out_channels, 1)));
}

at::Tensor ResBlockImpl::forward(const at::Tensor& x, const at::Tensor& emb) {
  if (!use_checkpoint_) return block(x, emb);
  // The node that recomputes the block holds the block alive until backward.
  auto self = std::static_pointer_cast<ResBlockImpl>(shared_from_this());
  return gradient_checkpoint(
      [self](const std::vector<at::Tensor>& in) { return self->block(in[0], in[1]); }, {x, emb},
      parameters());
}

at::Tensor ResBlockImpl::block(const at::Tensor& x, const at::Tensor& emb) {
  auto h = in_conv_(resampled(in_norm_->forward_silu(x), resample_));
  // [N, out or 2 out] -> [N, ., 1, 1], in the activations' dtype (emb may be wider under autocast).
  const auto emb_out = emb_linear_(at::silu(emb)).to(h.scalar_type()).unsqueeze(-1).unsqueeze(-1);
  if (use_scale_shift_norm_) {
    const auto scale_shift = emb_out.chunk(2, 1);
    h = out_norm_->forward_scale_shift_silu(h, scale_shift[0], scale_shift[1]);
  } else {
    h = out_norm_->forward_silu(h + emb_out);
  }
  h = out_conv_(dropout_(h));
  const at::Tensor skip = resampled(x, resample_);
  return (skip_connection_ ? skip_connection_(skip) : skip) + h;
}

}  // namespace difftrain::model
