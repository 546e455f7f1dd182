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

}  // namespace difftrain::train
