#include "model/resample.hpp"

namespace difftrain::model {

at::Tensor upsample_nearest_x2(const at::Tensor& x) {
  return at::upsample_nearest2d(x, {2 * x.size(2), 2 * x.size(3)});
}

at::Tensor avg_pool_x2(const at::Tensor& x) {
  return at::avg_pool2d(x, {2, 2}, {2, 2});
}

DownsampleImpl::DownsampleImpl(int64_t channels, bool use_conv) {
  if (use_conv)
    op_ = register_module(
        "op",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).stride(2).padding(1)));
}

at::Tensor DownsampleImpl::forward(const at::Tensor& x) {
  return op_ ? op_(x) : avg_pool_x2(x);
}

UpsampleImpl::UpsampleImpl(int64_t channels, bool use_conv) {
  if (use_conv)
    conv_ = register_module(
        "conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).padding(1)));
}

at::Tensor UpsampleImpl::forward(const at::Tensor& x) {
  const auto h = upsample_nearest_x2(x);
  return conv_ ? conv_(h) : h;
}

}  // namespace difftrain::model
