// Reads the pickle of a state dict as Python's torch.save writes it (data.pkl of the zip format),
// accepting only what a state dict holds: a dict (or OrderedDict) of names to tensors.
//
// Why not LibTorch's own unpickler (torch::pickle_load): in LibTorch 2.15 it turns every
// collections.OrderedDict into None, and model.state_dict() is an OrderedDict, so it fails on
// every checkpoint improved-diffusion and guided-diffusion wrote ("Expected GenericDict but got
// None"). Like Python's torch.load(weights_only=True), this reader knows a closed set of
// objects (tensors, storages, dicts, tuples, strings, numbers) and refuses anything else, so a
// weight file cannot run code. The zip container itself is read by LibTorch (pt_file.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "weights/state_dict.hpp"

namespace difftrain::weights {

// The storage of record `key` (data/<key> in the archive): a 1-D tensor of `numel` elements of
// `dtype`.
using StorageLoader =
    std::function<at::Tensor(const std::string& key, at::ScalarType dtype, int64_t numel)>;

// Throws WeightsError saying what the pickle holds when it is not a state dict (another object,
// a dict whose values are not tensors, an unsupported Python class) or is malformed.
StateDict unpickle_state_dict(std::string_view pickle, const StorageLoader& load_storage);

}  // namespace difftrain::weights
