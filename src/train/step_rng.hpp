// Randomness keyed by position, not by history: the generators of step s are seeded from
// (seed, s, stream), so a resumed run needs no stored generator state and draws of the global
// batch (timesteps, noise) do not depend on the number of ranks. Draws happen on the host (CPU
// generators) and travel to the device: the same numbers on a CPU and on any GPU.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace difftrain::train {

enum class RngStream : uint64_t {
  timesteps = 1,
  noise = 2,
  dropout = 3,
  evaluation = 4,
  label_dropout = 5,
  low_res_noise = 6
};

// splitmix64 finaliser: well-mixed seeds from structured inputs.
inline uint64_t mix_seed(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline uint64_t step_seed(uint64_t seed, int64_t step, RngStream stream, uint64_t extra = 0) {
  return mix_seed(mix_seed(mix_seed(mix_seed(seed) ^ static_cast<uint64_t>(step)) ^
                           static_cast<uint64_t>(stream)) ^
                  extra);
}

inline at::Generator cpu_generator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

// The noise eps of rows [first_row, first_row + rows) of step `step`'s global batch, float32 on
// the host: row i from its own generator keyed by (seed, step, i), so that a rank draws only its
// own rows and gets the numbers that row has in any other split of the batch.
at::Tensor step_noise(uint64_t seed, int64_t step, int64_t first_row, int64_t rows,
                      at::IntArrayRef sample_shape);

// The generators of samples [first, first + count) drawn with `seed` (`difftrain sample --seed`,
// the trainer's sample grids): sample i's from its own stream, so an image depends on its seed
// and index only, not on the batch it is drawn in or the number of ranks.
std::vector<at::Generator> sample_generators(uint64_t seed, int64_t first, int64_t count);

}  // namespace difftrain::train
