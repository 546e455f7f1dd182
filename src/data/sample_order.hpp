// Which samples go where: the per-epoch global permutation, the split of a global batch over
// ranks, and the per-sample flip decision. Pure functions of (seed, epoch, index), so the order
// is the same for any number of ranks, on any platform, and after a resume.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::data {

// What happens to the last, partial global batch of an epoch: dropped (every sample at most once
// per epoch) or filled by wrapping around to the start of the epoch's permutation (every sample
// at least once).
enum class LastBatch { drop, wrap };
LastBatch parse_last_batch(const std::string& name);  // "drop" or "wrap"; throws data::Error
std::string to_string(LastBatch last);

// A 64-bit key mixed from its arguments (splitmix64 rounds): a counter-based random number.
uint64_t hash_key(uint64_t seed, uint64_t tag, uint64_t a, uint64_t b = 0);

// A uniform random permutation of [0, n): our own Fisher–Yates with unbiased bounded draws from
// std::mt19937_64(key), whose output the C++ standard fixes, so it is portable.
std::vector<int64_t> permutation(int64_t n, uint64_t key);

// The global sample order of an epoch.
std::vector<int64_t> epoch_permutation(int64_t num_samples, uint64_t seed, int64_t epoch);
// Whether random_flip mirrors this sample in this epoch.
bool flip_sample(uint64_t seed, int64_t epoch, int64_t index);

// Global batches per epoch; throws data::Error when drop leaves none.
int64_t batches_per_epoch(int64_t num_samples, int64_t global_batch, LastBatch last);

// Rows [begin, end) of a global batch.
struct RowRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};
// Rank r of W takes rows [r*B/W, (r+1)*B/W) of every global batch of B rows; a global batch
// smaller than the world is an error (a rank without rows could not train).
RowRange rank_rows(int64_t global_batch, int rank, int world);
// The same split of n items (images to sample or evaluate), where fewer items than ranks is
// fine: the ranks past them get an empty range.
RowRange rank_share(int64_t n, int rank, int world);

// The sample indices at rows [rows.begin, rows.end) of global batch k of an epoch whose
// permutation is perm: perm[(k*B + row) mod n], which wraps only in a last partial batch.
std::vector<int64_t> batch_samples(const std::vector<int64_t>& perm, int64_t k,
                                   int64_t global_batch, RowRange rows);

}  // namespace difftrain::data
