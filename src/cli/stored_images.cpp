#include "cli/stored_images.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include "data/h5.hpp"
#include "data/h5_tensor.hpp"
#include "data/manifest.hpp"
#include "data/npz.hpp"
#include "data/shard_layout.hpp"
#include "data/shard_reader.hpp"
#include "data/shard_set.hpp"

namespace difftrain::cli {
namespace {

// The range's [begin, begin + count) of `total`, clipped.
std::pair<int64_t, int64_t> clip(const ImageRange& range, int64_t total) {
  const auto [begin, count] = range(total);
  const int64_t b = std::clamp<int64_t>(begin, 0, total);
  return {b, std::clamp<int64_t>(count, 0, total - b)};
}

StoredImages read_shard_file(const std::string& path, const ImageRange& range) {
  const h5::File file = h5::File::open(path);
  if (!file.has(data::shard::kImages))
    throw std::invalid_argument(path + ": no /images dataset (not a difftrain shard)");
  const std::vector<int64_t> shape = file.shape(data::shard::kImages);
  if (shape.size() != 4)
    throw std::invalid_argument(
        fmt::format("{}: /images has {} dimensions, not 4 (n, H, W, C)", path, shape.size()));
  const auto [b, n] = clip(range, shape[0]);
  if (n == 0) return {at::empty({0, shape[1], shape[2], shape[3]}, at::kByte), {}, shape[0]};
  StoredImages s{
      h5::read_tensor(file, data::shard::kImages, at::kByte).narrow(0, b, n), {}, shape[0]};
  if (file.has(data::shard::kLabels))
    s.labels = h5::read_tensor(file, data::shard::kLabels, at::kLong).narrow(0, b, n);
  return s;
}

// numpy.savez's layout of image_sample.py (improved- and guided-diffusion) and of `difftrain
// sample`: arr_0 uint8 images [n, H, W, C] (or [n, H, W]), arr_1 integer labels [n] if any.
StoredImages read_npz_samples(const std::string& path, const ImageRange& range) {
  const std::vector<data::NpyData> arrays = data::read_npz(path, data::NpyKinds::numbers);
  const auto find = [&](const std::string& key) {
    for (const auto& a : arrays)
      if (a.name == key) return &a;
    return static_cast<const data::NpyData*>(nullptr);
  };
  const data::NpyData* images = find("arr_0");
  if (!images) throw std::invalid_argument(path + ": no arr_0 (the images of numpy.savez)");
  if (images->descr != "u1" || (images->shape.size() != 3 && images->shape.size() != 4))
    throw std::invalid_argument(
        fmt::format("{}: arr_0 is {} of {} dimensions, not uint8 images [n, H, W, C]", path,
                    images->descr, images->shape.size()));
  std::vector<int64_t> shape = images->shape;
  if (shape.size() == 3) shape.push_back(1);
  at::Tensor pixels = at::empty(shape, at::kByte);
  std::memcpy(pixels.data_ptr(), images->data.data(), images->data.size());
  const auto [b, n] = clip(range, shape[0]);
  StoredImages s{pixels.narrow(0, b, n), {}, shape[0]};
  if (const data::NpyData* labels = find("arr_1")) {
    if (labels->shape.size() != 1 || labels->shape[0] != shape[0] || labels->descr[0] == 'f')
      throw std::invalid_argument(
          fmt::format("{}: arr_1 is not {} integer labels [n]", path, shape[0]));
    s.labels = at::tensor(data::int64_values(*labels), at::kLong).narrow(0, b, n);
  }
  return s;
}

StoredImages read_shard_set(const std::string& path, const ImageRange& range) {
  const data::Manifest manifest = data::read_manifest(path);
  data::ShardSet shards(manifest);
  const auto [b, n] = clip(range, shards.size());
  StoredImages s{at::empty({n, manifest.height, manifest.width, manifest.channels}, at::kByte),
                 {},
                 shards.size()};
  shards.read_range(b, n, s.pixels.data_ptr<uint8_t>());
  if (manifest.labels) {
    std::vector<int64_t> labels;
    for (std::size_t i = 0; i < manifest.shards.size() && std::ssize(labels) < b + n; ++i)
      for (int64_t label : data::read_shard_labels(data::open_shard(manifest, i), manifest))
        labels.push_back(label);
    labels.resize(static_cast<std::size_t>(b + n));
    s.labels = at::tensor(labels, at::kLong).narrow(0, b, n);
  }
  return s;
}

}  // namespace

StoredImages read_stored_images(const std::string& path, const ImageRange& range) {
  const std::string extension = std::filesystem::path(path).extension().string();
  return extension == ".h5"    ? read_shard_file(path, range)
         : extension == ".npz" ? read_npz_samples(path, range)
                               : read_shard_set(path, range);
}

StoredImages read_stored_images(const std::string& path, int64_t begin, int64_t count) {
  return read_stored_images(path, [=](int64_t) { return std::pair{begin, count}; });
}

}  // namespace difftrain::cli
