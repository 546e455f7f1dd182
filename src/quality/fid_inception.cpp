#include "quality/fid_inception.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <map>
#include <stdexcept>

#include "weights/pt_file.hpp"
#include "weights/state_dict.hpp"

namespace difftrain::quality {
namespace {

// BatchNorm with the ported statistics, in inference only: no num_batches_tracked, which the
// port's file may or may not carry.
class FrozenBatchNormImpl : public torch::nn::Module {
 public:
  explicit FrozenBatchNormImpl(int64_t channels)
      : weight_(register_parameter("weight", torch::ones({channels}), false)),
        bias_(register_parameter("bias", torch::zeros({channels}), false)),
        running_mean_(register_buffer("running_mean", torch::zeros({channels}))),
        running_var_(register_buffer("running_var", torch::ones({channels}))) {}

  at::Tensor forward(const at::Tensor& x) {
    constexpr double kEps = 1e-3;  // torchvision's BasicConv2d, as TensorFlow's Inception
    return at::batch_norm(x, weight_, bias_, running_mean_, running_var_, /*training=*/false,
                          /*momentum=*/0.0, kEps, /*cudnn_enabled=*/true);
  }

 private:
  at::Tensor weight_, bias_, running_mean_, running_var_;
};
TORCH_MODULE(FrozenBatchNorm);

// torchvision's BasicConv2d: a convolution without bias, BatchNorm, ReLU.
class BasicConv2dImpl : public torch::nn::Module {
 public:
  BasicConv2dImpl(int64_t in, int64_t out, torch::ExpandingArray<2> kernel, int64_t stride,
                  torch::ExpandingArray<2> padding)
      : conv_(register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                                                            .stride(stride)
                                                            .padding(padding)
                                                            .bias(false)))),
        bn_(register_module("bn", FrozenBatchNorm(out))) {}

  at::Tensor forward(const at::Tensor& x) { return at::relu(bn_(conv_(x))); }

 private:
  torch::nn::Conv2d conv_;
  FrozenBatchNorm bn_;
};
TORCH_MODULE(BasicConv2d);

at::Tensor avg_pool_3x3_without_padding(const at::Tensor& x) {
  // The port's patch: TensorFlow's average pool leaves the zero padding out of the mean.
  return at::avg_pool2d(x, {3, 3}, {1, 1}, {1, 1}, /*ceil_mode=*/false,
                        /*count_include_pad=*/false);
}
at::Tensor max_pool_3x3(const at::Tensor& x) {
  return at::max_pool2d(x, {3, 3}, {1, 1}, {1, 1});
}
at::Tensor max_pool_3x3_stride_2(const at::Tensor& x) {
  return at::max_pool2d(x, {3, 3}, {2, 2});
}

// An Inception block: named convolutions, flat as torchvision registers them (branch7x7dbl_1 to
// _5 are siblings), run in chains.
class InceptionBlock : public torch::nn::Module {
 protected:
  void conv(const std::string& name, int64_t in, int64_t out, torch::ExpandingArray<2> kernel,
            int64_t stride = 1, torch::ExpandingArray<2> padding = 0) {
    convs_.emplace(name, register_module(name, BasicConv2d(in, out, kernel, stride, padding)));
  }
  at::Tensor chain(at::Tensor x, std::initializer_list<const char*> names) {
    for (const char* name : names)
      x = convs_.at(name)(x);
    return x;
  }

 private:
  std::map<std::string, BasicConv2d> convs_;
};

// 35 x 35 (Mixed_5b-d).
class InceptionAImpl : public InceptionBlock {
 public:
  InceptionAImpl(int64_t in, int64_t pool_features) {
    conv("branch1x1", in, 64, 1);
    conv("branch5x5_1", in, 48, 1);
    conv("branch5x5_2", 48, 64, 5, 1, 2);
    conv("branch3x3dbl_1", in, 64, 1);
    conv("branch3x3dbl_2", 64, 96, 3, 1, 1);
    conv("branch3x3dbl_3", 96, 96, 3, 1, 1);
    conv("branch_pool", in, pool_features, 1);
  }
  at::Tensor forward(const at::Tensor& x) {
    return at::cat({chain(x, {"branch1x1"}), chain(x, {"branch5x5_1", "branch5x5_2"}),
                    chain(x, {"branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"}),
                    chain(avg_pool_3x3_without_padding(x), {"branch_pool"})},
                   1);
  }
};
TORCH_MODULE(InceptionA);

// 35 -> 17 (Mixed_6a).
class InceptionBImpl : public InceptionBlock {
 public:
  explicit InceptionBImpl(int64_t in) {
    conv("branch3x3", in, 384, 3, 2);
    conv("branch3x3dbl_1", in, 64, 1);
    conv("branch3x3dbl_2", 64, 96, 3, 1, 1);
    conv("branch3x3dbl_3", 96, 96, 3, 2);
  }
  at::Tensor forward(const at::Tensor& x) {
    return at::cat(
        {chain(x, {"branch3x3"}), chain(x, {"branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"}),
         max_pool_3x3_stride_2(x)},
        1);
  }
};
TORCH_MODULE(InceptionB);

// 17 x 17 with factorised 7 x 7 convolutions (Mixed_6b-e).
class InceptionCImpl : public InceptionBlock {
 public:
  InceptionCImpl(int64_t in, int64_t c7) {
    const torch::ExpandingArray<2> row{1, 7}, column{7, 1}, row_pad{0, 3}, column_pad{3, 0};
    conv("branch1x1", in, 192, 1);
    conv("branch7x7_1", in, c7, 1);
    conv("branch7x7_2", c7, c7, row, 1, row_pad);
    conv("branch7x7_3", c7, 192, column, 1, column_pad);
    conv("branch7x7dbl_1", in, c7, 1);
    conv("branch7x7dbl_2", c7, c7, column, 1, column_pad);
    conv("branch7x7dbl_3", c7, c7, row, 1, row_pad);
    conv("branch7x7dbl_4", c7, c7, column, 1, column_pad);
    conv("branch7x7dbl_5", c7, 192, row, 1, row_pad);
    conv("branch_pool", in, 192, 1);
  }
  at::Tensor forward(const at::Tensor& x) {
    return at::cat(
        {chain(x, {"branch1x1"}), chain(x, {"branch7x7_1", "branch7x7_2", "branch7x7_3"}),
         chain(x, {"branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4",
                   "branch7x7dbl_5"}),
         chain(avg_pool_3x3_without_padding(x), {"branch_pool"})},
        1);
  }
};
TORCH_MODULE(InceptionC);

// 17 -> 8 (Mixed_7a).
class InceptionDImpl : public InceptionBlock {
 public:
  explicit InceptionDImpl(int64_t in) {
    conv("branch3x3_1", in, 192, 1);
    conv("branch3x3_2", 192, 320, 3, 2);
    conv("branch7x7x3_1", in, 192, 1);
    conv("branch7x7x3_2", 192, 192, torch::ExpandingArray<2>{1, 7}, 1,
         torch::ExpandingArray<2>{0, 3});
    conv("branch7x7x3_3", 192, 192, torch::ExpandingArray<2>{7, 1}, 1,
         torch::ExpandingArray<2>{3, 0});
    conv("branch7x7x3_4", 192, 192, 3, 2);
  }
  at::Tensor forward(const at::Tensor& x) {
    return at::cat({chain(x, {"branch3x3_1", "branch3x3_2"}),
                    chain(x, {"branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"}),
                    max_pool_3x3_stride_2(x)},
                   1);
  }
};
TORCH_MODULE(InceptionD);

// 8 x 8 with split 3 x 3 convolutions (Mixed_7b, 7c). The port pools Mixed_7c's branch_pool
// with a max, not an average: TensorFlow's graph did.
class InceptionEImpl : public InceptionBlock {
 public:
  InceptionEImpl(int64_t in, bool max_pool) : max_pool_(max_pool) {
    const torch::ExpandingArray<2> row{1, 3}, column{3, 1}, row_pad{0, 1}, column_pad{1, 0};
    conv("branch1x1", in, 320, 1);
    conv("branch3x3_1", in, 384, 1);
    conv("branch3x3_2a", 384, 384, row, 1, row_pad);
    conv("branch3x3_2b", 384, 384, column, 1, column_pad);
    conv("branch3x3dbl_1", in, 448, 1);
    conv("branch3x3dbl_2", 448, 384, 3, 1, 1);
    conv("branch3x3dbl_3a", 384, 384, row, 1, row_pad);
    conv("branch3x3dbl_3b", 384, 384, column, 1, column_pad);
    conv("branch_pool", in, 192, 1);
  }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor b3 = chain(x, {"branch3x3_1"});
    const at::Tensor d3 = chain(x, {"branch3x3dbl_1", "branch3x3dbl_2"});
    const at::Tensor pooled = max_pool_ ? max_pool_3x3(x) : avg_pool_3x3_without_padding(x);
    return at::cat({chain(x, {"branch1x1"}),
                    at::cat({chain(b3, {"branch3x3_2a"}), chain(b3, {"branch3x3_2b"})}, 1),
                    at::cat({chain(d3, {"branch3x3dbl_3a"}), chain(d3, {"branch3x3dbl_3b"})}, 1),
                    chain(pooled, {"branch_pool"})},
                   1);
  }

 private:
  bool max_pool_;
};
TORCH_MODULE(InceptionE);

}  // namespace

FidInceptionImpl::FidInceptionImpl() {
  const auto add = [this](const std::string& name, auto module) {
    layers_.emplace_back(register_module(name, module));
  };
  const auto pool = [this] { layers_.emplace_back(torch::nn::Functional(max_pool_3x3_stride_2)); };
  add("Conv2d_1a_3x3", BasicConv2d(3, 32, 3, 2, 0));  // 3 x 299 x 299 -> 32 x 149 x 149
  add("Conv2d_2a_3x3", BasicConv2d(32, 32, 3, 1, 0));
  add("Conv2d_2b_3x3", BasicConv2d(32, 64, 3, 1, 1));  // -> 64 x 147 x 147
  pool();                                              // -> 64 x 73 x 73
  add("Conv2d_3b_1x1", BasicConv2d(64, 80, 1, 1, 0));
  add("Conv2d_4a_3x3", BasicConv2d(80, 192, 3, 1, 0));  // -> 192 x 71 x 71
  pool();                                               // -> 192 x 35 x 35
  add("Mixed_5b", InceptionA(192, 32));
  add("Mixed_5c", InceptionA(256, 64));
  add("Mixed_5d", InceptionA(288, 64));  // -> 288 x 35 x 35
  add("Mixed_6a", InceptionB(288));      // -> 768 x 17 x 17
  add("Mixed_6b", InceptionC(768, 128));
  add("Mixed_6c", InceptionC(768, 160));
  spatial_layer_ = layers_.size();
  add("Mixed_6d", InceptionC(768, 160));
  add("Mixed_6e", InceptionC(768, 192));
  add("Mixed_7a", InceptionD(768));  // -> 1280 x 8 x 8
  add("Mixed_7b", InceptionE(1280, /*max_pool=*/false));
  add("Mixed_7c", InceptionE(2048, /*max_pool=*/true));  // -> 2048 x 8 x 8
  fc_ = register_module(
      "fc",
      torch::nn::Linear(torch::nn::LinearOptions(kPool3Features, kInceptionClasses).bias(false)));
}

InceptionFeatures FidInceptionImpl::forward(const at::Tensor& x) {
  at::Tensor h = x, spatial;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    h = layers_[i].forward(h);
    // guided-diffusion's evaluator: mixed_6/conv[..., :7] of TensorFlow's NHWC, flattened.
    if (i == spatial_layer_)
      spatial = h.narrow(1, 0, kSpatialChannels).permute({0, 2, 3, 1}).flatten(1);
  }
  return {h.mean({2, 3}), spatial};  // pool3: the global average
}

at::Tensor FidInceptionImpl::class_logits(const at::Tensor& pool3) {
  const torch::NoGradGuard no_grad;
  return fc_->forward(pool3);
}

FidInception load_fid_inception(const std::string& path, const c10::Device& device) {
  weights::StateDict used;
  for (weights::NamedTensor& t : weights::load_pt(path)) {
    const bool head_bias = t.name == "fc.bias";
    const bool counter = t.name.ends_with(".num_batches_tracked");
    if (!head_bias && !counter) used.push_back(std::move(t));
  }
  FidInception net;
  weights::load_state_dict(
      *net, used,
      path + " (FID's Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth)");
  net->eval();
  net->to(device);
  return net;
}

InceptionFeatures inception_features(FidInception& net, const at::Tensor& images) {
  if (images.dim() != 4 || images.scalar_type() != at::kByte ||
      (images.size(3) != 1 && images.size(3) != 3))
    throw std::invalid_argument(fmt::format("FID takes uint8 images [n, H, W, 1 or 3], not {} {}",
                                            c10::toString(images.scalar_type()),
                                            weights::shape_string(images.sizes())));
  const torch::NoGradGuard no_grad;
  const c10::Device device = net->parameters().front().device();
  at::Tensor x = images.to(device).permute({0, 3, 1, 2}).to(at::kFloat).div(255);
  if (x.size(1) == 1) x = x.expand({-1, 3, -1, -1});
  x = at::upsample_bilinear2d(x, {kInceptionSize, kInceptionSize}, /*align_corners=*/false);
  return net->forward(x * 2 - 1);
}

}  // namespace difftrain::quality
