#include "data/h5_tensor.hpp"

#include <ATen/ATen.h>

namespace difftrain::h5 {
namespace {

template <typename T>
at::Tensor read_as(const File& file, const std::string& dataset, c10::ScalarType dtype) {
  std::vector<T> values = file.read<T>(dataset);
  return at::from_blob(values.data(), file.shape(dataset), at::TensorOptions().dtype(dtype))
      .clone();
}

}  // namespace

at::Tensor read_tensor(const File& file, const std::string& dataset, c10::ScalarType dtype) {
  switch (dtype) {
    case at::kByte:
      return read_as<uint8_t>(file, dataset, dtype);
    case at::kLong:
      return read_as<int64_t>(file, dataset, dtype);
    case at::kFloat:
      return read_as<float>(file, dataset, dtype);
    case at::kDouble:
      return read_as<double>(file, dataset, dtype);
    default:
      file.fail("cannot read '" + dataset + "' as " + std::string(c10::toString(dtype)));
  }
}

void write_tensor(File& file, const std::string& dataset, const at::Tensor& tensor) {
  const at::Tensor t = tensor.detach().cpu().contiguous();
  const std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  switch (t.scalar_type()) {
    case at::kByte:
      return file.write(dataset, shape, t.data_ptr<uint8_t>());
    case at::kLong:
      return file.write(dataset, shape, t.data_ptr<int64_t>());
    case at::kFloat:
      return file.write(dataset, shape, t.data_ptr<float>());
    case at::kDouble:
      return file.write(dataset, shape, t.data_ptr<double>());
    default:
      file.fail("cannot write '" + dataset + "' of dtype " +
                std::string(c10::toString(t.scalar_type())));
  }
}

}  // namespace difftrain::h5
