// Whole HDF5 datasets as LibTorch tensors (CPU, contiguous).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "data/h5.hpp"

namespace difftrain::h5 {

// Reads `dataset` converted to dtype (HDF5 converts numerically); the shape is the dataset's.
at::Tensor read_tensor(const File& file, const std::string& dataset, c10::ScalarType dtype);
// Writes a CPU tensor of dtype uint8, int64, float32 or float64 under its own dtype.
void write_tensor(File& file, const std::string& dataset, const at::Tensor& tensor);

}  // namespace difftrain::h5
