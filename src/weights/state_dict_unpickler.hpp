// Reads the pickle of a state dict as Python's torch.save writes it (data.pkl of the zip format,
// or the pickles of the legacy format), accepting only what a state dict holds: a dict (or
// OrderedDict) of names to tensors.
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

// How a file in the legacy format begins: the pickle of its magic number (protocol 2, a LONG1 of
// 10 bytes, STOP).
inline constexpr std::string_view kLegacyMagicPickle{
    "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e", 15};

// A whole file in PyTorch's legacy format (torch.save before PyTorch 1.6, or with
// _use_new_zipfile_serialization=False; files published before mid-2020): five pickles
// (the magic number, the format version 1001, the writer's byte order and type sizes, the state
// dict, the keys of its storages), then each storage in the keys' order as its element count
// (int64) and its bytes. Throws WeightsError as unpickle_state_dict does, and when the file ends
// early, was written big-endian, or a storage's count differs from its tensor's.
StateDict unpickle_legacy_state_dict(std::string_view file);

}  // namespace difftrain::weights
