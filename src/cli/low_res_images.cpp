#include "cli/low_res_images.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <vector>

#include "data/canvas.hpp"
#include "data/h5.hpp"
#include "data/h5_tensor.hpp"
#include "data/manifest.hpp"
#include "data/npz.hpp"
#include "data/shard_layout.hpp"
#include "data/shard_reader.hpp"
#include "data/shard_set.hpp"

namespace difftrain::cli {
namespace {

struct StoredImages {
  at::Tensor pixels;  // uint8 [n, H, W, C]
  at::Tensor labels;  // int64 [n] or undefined
};

StoredImages read_shard_file(const std::string& path, int64_t count) {
  const h5::File file = h5::File::open(path);
  if (!file.has(data::shard::kImages))
    throw std::invalid_argument(path + ": no /images dataset (not a difftrain shard)");
  const std::vector<int64_t> shape = file.shape(data::shard::kImages);
  if (shape.size() != 4)
    throw std::invalid_argument(
        fmt::format("{}: /images has {} dimensions, not 4 (n, H, W, C)", path, shape.size()));
  const int64_t n = std::min(count, shape[0]);
  StoredImages s{h5::read_tensor(file, data::shard::kImages, at::kByte).narrow(0, 0, n), {}};
  if (file.has(data::shard::kLabels))
    s.labels = h5::read_tensor(file, data::shard::kLabels, at::kLong).narrow(0, 0, n);
  return s;
}

// numpy.savez's layout of image_sample.py (improved- and guided-diffusion) and of `difftrain
// sample`: arr_0 uint8 images [n, H, W, C] (or [n, H, W]), arr_1 integer labels [n] if any.
StoredImages read_npz_samples(const std::string& path, int64_t count) {
  const std::vector<data::NpyData> arrays = data::read_npz(path);
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
  const int64_t n = std::min(count, shape[0]);
  at::Tensor pixels = at::empty(shape, at::kByte);
  std::memcpy(pixels.data_ptr(), images->data.data(), images->data.size());
  StoredImages s{pixels.narrow(0, 0, n), {}};
  if (const data::NpyData* labels = find("arr_1")) {
    if (labels->shape.size() != 1 || labels->shape[0] != shape[0])
      throw std::invalid_argument(fmt::format("{}: arr_1 is not {} labels [n]", path, shape[0]));
    s.labels = at::tensor(data::int64_values(*labels), at::kLong).narrow(0, 0, n);
  }
  return s;
}

StoredImages read_shard_set(const std::string& path, int64_t count) {
  const data::Manifest manifest = data::read_manifest(path);
  data::ShardSet shards(manifest);
  const int64_t n = std::min(count, shards.size());
  StoredImages s{at::empty({n, manifest.height, manifest.width, manifest.channels}, at::kByte), {}};
  shards.read_range(0, n, s.pixels.data_ptr<uint8_t>());
  if (manifest.labels) {
    std::vector<int64_t> labels;
    for (std::size_t i = 0; i < manifest.shards.size() && std::ssize(labels) < n; ++i)
      for (int64_t label : data::read_shard_labels(data::open_shard(manifest, i), manifest))
        labels.push_back(label);
    labels.resize(static_cast<std::size_t>(n));
    s.labels = at::tensor(labels, at::kLong);
  }
  return s;
}

}  // namespace

LowResImages read_low_res_images(const std::string& path, int64_t count, const TrainedModel& m) {
  const int64_t low = m.denoiser.net->config().low_res_size, size = m.shape.image_size,
                C = m.shape.channels;
  const std::string extension = std::filesystem::path(path).extension().string();
  const StoredImages s = extension == ".h5"    ? read_shard_file(path, count)
                         : extension == ".npz" ? read_npz_samples(path, count)
                                               : read_shard_set(path, count);
  const int64_t n = s.pixels.size(0), H = s.pixels.size(1), W = s.pixels.size(2),
                channels = s.pixels.size(3);
  if (n == 0) throw std::invalid_argument(path + ": holds no images");
  if (channels != C || H != W || (H != low && H != size))
    throw std::invalid_argument(fmt::format(
        "{}: holds {}x{}x{} images; the upsampler takes {}x{}x{} (or {}x{}x{}, which it "
        "area-downsamples as in training)",
        path, channels, H, W, C, low, low, C, size, size));

  at::Tensor x = data::to_network_pixels(s.pixels.contiguous().data_ptr<uint8_t>(), n,
                                         data::stored_canvas(H, W, C));
  if (H == size) x = m.denoiser.low_res_of(x);
  return {x, s.labels, H};
}

}  // namespace difftrain::cli
