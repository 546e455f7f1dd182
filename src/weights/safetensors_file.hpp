// State dicts in the safetensors format (what diffusers and the Hugging Face tools read): an
// 8-byte little-endian header length, a JSON header giving each tensor's dtype, shape and byte
// range, then the raw little-endian tensor bytes. There is no packaged C++ library for it; the
// header is nlohmann-json.
#pragma once

#include <map>
#include <string>

#include "weights/state_dict.hpp"

namespace difftrain::weights {

// Writes the tensors (CPU) in the given order; `metadata` goes to the header's __metadata__.
// Written to a temporary name and renamed.
void save_safetensors(const StateDict& state, const std::string& path,
                      const std::map<std::string, std::string>& metadata = {});

// Throws WeightsError naming the file and, where it applies, the tensor: truncated, a header
// that is not JSON, an unknown dtype, byte ranges that do not match the shapes.
StateDict load_safetensors(const std::string& path);

}  // namespace difftrain::weights
