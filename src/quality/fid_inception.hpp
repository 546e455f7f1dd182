// The Inception-v3 network of FID (Heusel et al. 2017): TensorFlow's 2015-12-05 Inception as
// pytorch-fid ports it (`pt_inception-2015-12-05-6726825d.pth`), with torchvision's parameter
// names and the port's three departures from torchvision's Inception3 (average pools that leave
// the padding out of the mean in Mixed_5b-d, 6b-e and 7b; a max pool in Mixed_7c). Its 2048
// pool3 features are what FID compares; its spatial features at 17 x 17 what sFID compares (Nash
// et al. 2021, as guided-diffusion's evaluator takes them); the file's 1008-way classifier head,
// without its bias, gives the class probabilities of the Inception Score
// (quality/inception_score.hpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

namespace difftrain::quality {

constexpr int64_t kPool3Features = 2048;
// sFID's: the first 7 channels of TensorFlow's mixed_6/conv (Mixed_6d's branch1x1, the first
// channels of that block's output) at 17 x 17, flattened in TensorFlow's (h, w, c) order.
constexpr int64_t kSpatialChannels = 7;
constexpr int64_t kSpatialFeatures = kSpatialChannels * 17 * 17;  // 2023
constexpr int64_t kInceptionSize = 299;      // the input size the network was trained at
constexpr int64_t kInceptionClasses = 1008;  // the 2015 graph's classifier outputs

// What the network gives the measures of sample quality.
struct InceptionFeatures {
  at::Tensor pool3;    // [N, 2048]: FID's, the Inception Score's, precision and recall's
  at::Tensor spatial;  // [N, 2023]: sFID's
};

// x [N, 3, 299, 299] in [-1, 1] -> its pool3 and spatial features.
class FidInceptionImpl : public torch::nn::Module {
 public:
  FidInceptionImpl();
  InceptionFeatures forward(const at::Tensor& x);
  // pool3 features [N, 2048] -> the class logits [N, 1008] as the Inception Score's reference
  // code takes them (improved-gan: pool3 · W, the head's bias left out).
  at::Tensor class_logits(const at::Tensor& pool3);

 private:
  std::vector<torch::nn::AnyModule> layers_;  // in forward order, the two stem max pools included
  std::size_t spatial_layer_ = 0;             // Mixed_6d's index in layers_
  torch::nn::Linear fc_{nullptr};             // the head: its weight only
};
TORCH_MODULE(FidInception);

// The network with the weights of a PyTorch state dict (pytorch-fid's file, saved by torch.save
// in its zip format), in eval mode on `device`. The head's bias (fc.bias) and the BatchNorm
// counters (num_batches_tracked) are ignored; every other tensor must be there with its shape.
// Throws weights::WeightsError naming the file.
FidInception load_fid_inception(const std::string& path, const c10::Device& device);

// pytorch-fid's preprocessing and forward pass: images uint8 [N, H, W, C] (C = 1 or 3, any size;
// on any device) -> float32 features on the network's device. One channel is repeated to three
// (PIL's convert("RGB")), the pixels scaled to [0, 1], bilinearly resized to 299 x 299
// (align_corners false) and mapped to [-1, 1].
InceptionFeatures inception_features(FidInception& net, const at::Tensor& images);

}  // namespace difftrain::quality
