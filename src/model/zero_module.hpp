// improved-diffusion's zero_module: layers that start at zero, so every residual branch starts as
// the identity and the network's initial output is exactly zero.
#pragma once

#include <torch/nn/module.h>

namespace difftrain::model {

// Zeroes every parameter of `module` (and of its children) in place.
void zero_parameters(torch::nn::Module& module);

}  // namespace difftrain::model
