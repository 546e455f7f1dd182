// Random access to the samples of a whole sharded set by global index. Shards are opened (and
// checked) on first use and at most max_open stay open, so sets of many shards need few file
// handles. Not thread-safe: the loader's I/O thread owns one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "data/manifest.hpp"

namespace difftrain::data {

class ShardSet {
 public:
  explicit ShardSet(const Manifest& manifest, std::size_t max_open = 64);
  ~ShardSet();
  ShardSet(const ShardSet&) = delete;
  ShardSet& operator=(const ShardSet&) = delete;

  int64_t size() const { return offsets_.back(); }
  int64_t sample_bytes() const { return sample_bytes_; }
  // Copies sample `index` (H*W*C bytes, HWC) to out. Throws data::Error naming the shard.
  void read(int64_t index, uint8_t* out);
  // Samples [first, first + count), which may span shards.
  void read_range(int64_t first, int64_t count, uint8_t* out);

 private:
  struct Open;
  Open& shard(std::size_t i);
  std::size_t shard_of(int64_t index) const;

  const Manifest& manifest_;
  std::size_t max_open_;
  int64_t sample_bytes_;
  std::vector<int64_t> offsets_;  // offsets_[i]: global index of shard i's first sample
  std::vector<std::unique_ptr<Open>> open_;
  std::deque<std::size_t> open_order_;
};

}  // namespace difftrain::data
