#include "train/step_rng.hpp"

#include <ATen/ATen.h>

#include <vector>

namespace difftrain::train {

at::Tensor step_noise(uint64_t seed, int64_t step, int64_t first_row, int64_t rows,
                      at::IntArrayRef sample_shape) {
  std::vector<int64_t> shape{rows};
  shape.insert(shape.end(), sample_shape.begin(), sample_shape.end());
  at::Tensor eps = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  for (int64_t i = 0; i < rows; ++i) {
    const auto row = static_cast<uint64_t>(first_row + i);
    eps.select(0, i).normal_(0.0, 1.0, cpu_generator(step_seed(seed, step, RngStream::noise, row)));
  }
  return eps;
}

std::vector<at::Generator> sample_generators(uint64_t seed, int64_t first, int64_t count) {
  constexpr uint64_t kSampleStreamTag = 0x53414d504c45;  // "SAMPLE": apart from the training draws
  std::vector<at::Generator> generators;
  generators.reserve(count);
  for (int64_t i = first; i < first + count; ++i)
    generators.push_back(cpu_generator(step_seed(seed, i, RngStream::noise, kSampleStreamTag)));
  return generators;
}

}  // namespace difftrain::train
