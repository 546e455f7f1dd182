// Opening a shard listed in a manifest and checking it against its entry, from a cheap structural
// check (what the loader does at start) to a full checksum (what `h5shard verify` does).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/h5.hpp"
#include "data/manifest.hpp"

namespace difftrain::data {

// Opens shard i and checks it: the file exists and has the recorded size, is HDF5, holds images
// uint8 [n, H, W, C] with n, H, W, C as in the manifest, and labels (any integer type) [n] when
// the manifest has labels. Throws data::Error naming the file.
h5::File open_shard(const Manifest& manifest, std::size_t i);

// The shard's labels as int64, checked to lie in [0, num_classes).
std::vector<int64_t> read_shard_labels(const h5::File& file, const Manifest& manifest);

// CRC-32 of the image bytes in C order followed by the labels as little-endian int64 (when
// present), read in blocks: "crc32:0123abcd".
std::string shard_checksum(const h5::File& file);

// Throws data::Error when the shard's checksum differs from info.checksum (if recorded).
void check_checksum(const h5::File& file, const ShardInfo& info);

// open_shard, the label range and the checksum against the manifest. Throws data::Error.
void verify_shard(const Manifest& manifest, std::size_t i);

}  // namespace difftrain::data
