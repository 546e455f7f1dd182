// manifest.json: what a directory of HDF5 shards holds and how it was made. Readers trust only
// what they check: the loader and `h5shard verify` compare every shard with its entry here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::data {

struct ShardInfo {
  std::string file;  // relative to the manifest's directory
  int64_t num_samples = 0;
  int64_t bytes = -1;    // the file's size; -1: not recorded
  std::string checksum;  // "crc32:0123abcd" (see shard_reader.hpp); empty: not recorded
};

struct Manifest {
  static constexpr int kFormatVersion = 1;
  int format_version = kFormatVersion;
  std::string name;
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  bool labels = false;
  int64_t num_classes = 0;               // when labels: labels are in [0, num_classes)
  std::vector<std::string> class_names;  // empty, or one per class
  std::string compression = "none";      // none, gzip or lzf (informative)
  std::vector<ShardInfo> shards;
  std::string source = "{}";  // JSON object: how the set was made (tool, inputs, split, ...)
  std::string path;           // the file it was read from (not stored)

  int64_t num_samples() const;
  std::string directory() const;                // of path
  std::string shard_path(std::size_t i) const;  // directory() / shards[i].file
};

// path: a manifest.json, or a directory holding one. Throws data::Error naming the file.
Manifest read_manifest(const std::string& path);
// Writes through a temporary file renamed into place, so a reader never sees half a manifest.
void write_manifest(const Manifest& manifest, const std::string& path);
// path itself when it names a file, else path/manifest.json.
std::string manifest_path(const std::string& path);

}  // namespace difftrain::data
