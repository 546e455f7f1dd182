// A state dict: a model's tensors under their improved-diffusion names, in the model's order. It
// is what the weight files (pt_file, safetensors_file) hold and what export and import move
// between a difftrain UNet and them.
#pragma once

#include <ATen/core/Tensor.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace difftrain::weights {

// A weight file that cannot be read, or weights that do not fit: the message names the file.
struct WeightsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};
using StateDict = std::vector<NamedTensor>;

// The model's parameters and buffers, as contiguous CPU tensors in the model's dtype.
StateDict state_dict_of(const torch::nn::Module& model);

// Copies `weights` into the model, as PyTorch's load_state_dict(strict=True): every tensor of the
// model must be there with its shape and none other. Floating tensors of another precision (fp16,
// bf16, fp64) are converted to the model's. Throws WeightsError starting with `origin` and naming
// the missing, unexpected and mis-shaped tensors.
void load_state_dict(torch::nn::Module& model, const StateDict& weights, const std::string& origin);

// "[128, 3, 3, 3]"
std::string shape_string(at::IntArrayRef shape);

}  // namespace difftrain::weights
