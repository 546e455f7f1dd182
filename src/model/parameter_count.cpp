#include "model/parameter_count.hpp"

namespace difftrain::model {
int64_t parameter_count(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters())
    n += p.numel();
  return n;
}

std::vector<std::pair<std::string, int64_t>> parameter_breakdown(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, int64_t>> parts;
  for (const auto& child : model.named_children()) {
    const auto& name = child.key();
    if (name == "input_blocks" || name == "output_blocks") {
      for (const auto& block : child.value()->named_children())
        parts.emplace_back(name + "." + block.key(), parameter_count(*block.value()));
    } else {
      parts.emplace_back(name, parameter_count(*child.value()));
    }
  }
  return parts;
}

int64_t parameter_count(const UNet& model) {
  return parameter_count(*model);
}

}  // namespace difftrain::model
