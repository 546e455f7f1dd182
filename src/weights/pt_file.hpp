// State dicts in PyTorch's torch.save format: a zip archive (written and read by LibTorch's
// PyTorchStreamWriter / PyTorchStreamReader) holding the pickled dict and one record per tensor.
// What improved-diffusion, guided-diffusion and most PyTorch code load and save. Files in the
// legacy format (before PyTorch 1.6) are read too.
#pragma once

#include <string>

#include "weights/state_dict.hpp"

namespace difftrain::weights {

// Writes a plain dict of names to tensors that torch.load(path, weights_only=True) reads. The
// tensors must be on the CPU. Written to a temporary name and renamed.
void save_pt(const StateDict& state, const std::string& path);

// Reads a state dict saved by torch.save (a dict or OrderedDict of names to tensors; other
// dtypes than fp32 are kept), in the zip format or the legacy one. Throws WeightsError naming the
// file: neither format (another file, or truncated), or not a state dict.
StateDict load_pt(const std::string& path);

}  // namespace difftrain::weights
