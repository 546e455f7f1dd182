#include "data/sample_order.hpp"

#include <random>
#include <utility>

#include "data/error.hpp"

namespace difftrain::data {
namespace {

// Distinct streams for distinct uses of one seed.
constexpr uint64_t kEpochTag = 0x65706f6368ULL;  // "epoch"
constexpr uint64_t kFlipTag = 0x666c6970ULL;     // "flip"

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform in [0, range) without modulo bias (Lemire's multiply-and-reject).
uint64_t bounded(std::mt19937_64& gen, uint64_t range) {
  unsigned __int128 m = static_cast<unsigned __int128>(gen()) * range;
  auto low = static_cast<uint64_t>(m);
  if (low < range) {
    const uint64_t threshold = (0 - range) % range;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(gen()) * range;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

}  // namespace

LastBatch parse_last_batch(const std::string& name) {
  if (name == "drop") return LastBatch::drop;
  if (name == "wrap") return LastBatch::wrap;
  throw Error("unknown last-batch policy '" + name + "' (drop or wrap)");
}

std::string to_string(LastBatch last) {
  return last == LastBatch::wrap ? "wrap" : "drop";
}

uint64_t hash_key(uint64_t seed, uint64_t tag, uint64_t a, uint64_t b) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ tag);
  h = splitmix64(h ^ a);
  return splitmix64(h ^ b);
}

std::vector<int64_t> permutation(int64_t n, uint64_t key) {
  std::vector<int64_t> perm(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    perm[static_cast<std::size_t>(i)] = i;
  std::mt19937_64 gen(key);
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = bounded(gen, static_cast<uint64_t>(i) + 1);
    std::swap(perm[static_cast<std::size_t>(i)], perm[j]);
  }
  return perm;
}

std::vector<int64_t> epoch_permutation(int64_t num_samples, uint64_t seed, int64_t epoch) {
  return permutation(num_samples, hash_key(seed, kEpochTag, static_cast<uint64_t>(epoch)));
}

bool flip_sample(uint64_t seed, int64_t epoch, int64_t index) {
  return (hash_key(seed, kFlipTag, static_cast<uint64_t>(epoch), static_cast<uint64_t>(index)) >>
          63) != 0;
}

int64_t batches_per_epoch(int64_t num_samples, int64_t global_batch, LastBatch last) {
  if (global_batch <= 0) throw Error("global batch size must be positive");
  const int64_t n = last == LastBatch::drop ? num_samples / global_batch
                                            : (num_samples + global_batch - 1) / global_batch;
  if (n == 0)
    throw Error("the data set has " + std::to_string(num_samples) +
                " samples, fewer than one global batch of " + std::to_string(global_batch) +
                (last == LastBatch::drop ? " (use last_batch: wrap)" : ""));
  return n;
}

RowRange rank_share(int64_t n, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world)
    throw Error("rank " + std::to_string(rank) + " is outside a world of " + std::to_string(world));
  return {rank * n / world, (rank + 1) * n / world};
}

RowRange rank_rows(int64_t global_batch, int rank, int world) {
  if (global_batch < world)
    throw Error("global batch " + std::to_string(global_batch) + " is smaller than the " +
                std::to_string(world) + " ranks");
  return rank_share(global_batch, rank, world);
}

std::vector<int64_t> batch_samples(const std::vector<int64_t>& perm, int64_t k,
                                   int64_t global_batch, RowRange rows) {
  const auto n = static_cast<int64_t>(perm.size());
  std::vector<int64_t> out;
  out.reserve(static_cast<std::size_t>(rows.size()));
  for (int64_t row = rows.begin; row < rows.end; ++row)
    out.push_back(perm[static_cast<std::size_t>((k * global_batch + row) % n)]);
  return out;
}

}  // namespace difftrain::data
