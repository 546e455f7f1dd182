#include "data/shard_set.hpp"

#include <algorithm>
#include <optional>

#include "data/error.hpp"
#include "data/h5.hpp"
#include "data/shard_layout.hpp"
#include "data/shard_reader.hpp"

namespace difftrain::data {

struct ShardSet::Open {
  explicit Open(h5::File f) : file(std::move(f)), images(file, shard::kImages) {}
  h5::File file;
  h5::Rows images;  // refers to file: Open never moves (held by unique_ptr)
};

ShardSet::ShardSet(const Manifest& manifest, std::size_t max_open)
    : manifest_(manifest),
      max_open_(std::max<std::size_t>(max_open, 1)),
      sample_bytes_(manifest.height * manifest.width * manifest.channels),
      open_(manifest.shards.size()) {
  offsets_.push_back(0);
  for (const ShardInfo& s : manifest.shards)
    offsets_.push_back(offsets_.back() + s.num_samples);
}

ShardSet::~ShardSet() = default;

std::size_t ShardSet::shard_of(int64_t index) const {
  if (index < 0 || index >= size())
    throw Error(manifest_.path + ": sample " + std::to_string(index) + " outside the " +
                std::to_string(size()) + " samples");
  const auto it = std::upper_bound(offsets_.begin(), offsets_.end(), index);
  return static_cast<std::size_t>(it - offsets_.begin()) - 1;
}

ShardSet::Open& ShardSet::shard(std::size_t i) {
  if (!open_[i]) {
    if (open_order_.size() >= max_open_) {
      open_[open_order_.front()].reset();
      open_order_.pop_front();
    }
    try {
      open_[i] = std::make_unique<Open>(open_shard(manifest_, i));
    } catch (const h5::Error& e) {
      throw Error(e.what());
    }
    open_order_.push_back(i);
  }
  return *open_[i];
}

void ShardSet::read(int64_t index, uint8_t* out) {
  read_range(index, 1, out);
}

void ShardSet::read_range(int64_t first, int64_t count, uint8_t* out) {
  while (count > 0) {
    const std::size_t i = shard_of(first);
    const int64_t local = first - offsets_[i];
    const int64_t n = std::min(count, offsets_[i + 1] - first);
    try {
      shard(i).images.read(local, n, out);
    } catch (const h5::Error& e) {
      throw Error(e.what());
    }
    first += n;
    count -= n;
    out += n * sample_bytes_;
  }
}

}  // namespace difftrain::data
