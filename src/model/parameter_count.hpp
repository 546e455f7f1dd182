// Parameter counts of a UNet (or any module), whole and by part (for `difftrain model-info`).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/unet.hpp"

namespace difftrain::model {

// (part, parameters) in state-dict order: "time_embed", "label_emb" (conditional models only),
// "input_blocks.0" (the input conv), ..., "input_blocks.<i>", "middle_block",
// "output_blocks.0", ..., "out". The parts sum to parameter_count. The same for the classifier
// (EncoderUNet), which has no label_emb and no output_blocks.
std::vector<std::pair<std::string, int64_t>> parameter_breakdown(const torch::nn::Module& model);
inline std::vector<std::pair<std::string, int64_t>> parameter_breakdown(const UNet& model) {
  return parameter_breakdown(*model);
}

int64_t parameter_count(const UNet& model);
int64_t parameter_count(const torch::nn::Module& module);

}  // namespace difftrain::model
