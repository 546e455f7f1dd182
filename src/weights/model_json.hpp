// The "model" object of the JSON beside exported weights (`difftrain export`, bench_train_step
// --export): every UNetConfig field under its name, from which bench/baseline's
// model_from_difftrain builds the same PyTorch model.
#pragma once

#include <nlohmann/json.hpp>

#include "model/unet_config.hpp"

namespace difftrain::weights {

nlohmann::ordered_json model_json(const model::UNetConfig& config);

}  // namespace difftrain::weights
