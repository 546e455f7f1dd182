// Writes one shard in the layout of shard_layout.hpp, samples appended in order. The file is
// written under a ".partial" name and renamed by finish(), so an interrupted conversion leaves
// nothing that looks like a complete shard.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/checksum.hpp"
#include "data/h5.hpp"
#include "data/manifest.hpp"

namespace difftrain::data {

struct ShardSpec {
  int64_t num_samples = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  bool labels = false;
  h5::Compression compression = h5::Compression::none;
  int64_t first_index = 0;  // of the shard's first sample in the whole set (an attribute)
  std::string source;       // free text attribute: how the set was made
};

class ShardWriter {
 public:
  ShardWriter(const std::string& directory, const std::string& file, const ShardSpec& spec);
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  ~ShardWriter();  // removes the partial file unless finish() ran

  // count samples of H*W*C bytes each (HWC) and, when the shard has labels, count labels.
  void append(const uint8_t* images, const int64_t* labels, int64_t count);
  // Writes the labels, closes, renames into place; returns the manifest entry.
  ShardInfo finish();

 private:
  void discard() noexcept;  // closes and removes the partial file
  std::string file_;
  std::string path_;
  std::string partial_;
  ShardSpec spec_;
  std::optional<h5::File> h5_;
  std::optional<h5::Rows> images_;
  std::vector<int64_t> labels_;
  int64_t written_ = 0;
  Crc32 crc_;
  bool finished_ = false;
};

}  // namespace difftrain::data
