#include "model/zero_module.hpp"

namespace difftrain::model {

void zero_parameters(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters())
    p.zero_();
}

}  // namespace difftrain::model
