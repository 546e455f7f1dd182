// NumPy arrays: .npy files, or the arrays of an .npz (numpy.savez: guided-diffusion's samples
// are arr_0 images and arr_1 labels), read by data/npz.hpp.
#include <filesystem>

#include "data/error.hpp"
#include "data/npz.hpp"
#include "source.hpp"

namespace difftrain::h5shard {
namespace {

using data::Error;
using data::NpyData;

bool is_npz(const std::string& path) {
  return std::filesystem::path(path).extension() == ".npz";
}

}  // namespace

Source open_npy(const std::vector<std::string>& inputs) {
  NpyData images, labels;
  std::vector<NpyData> arrays;
  for (const std::string& path : inputs) {
    if (is_npz(path)) {
      for (NpyData& a : data::read_npz(path))
        arrays.push_back(std::move(a));
    } else {
      arrays.push_back(data::read_npy(path));
    }
  }
  for (NpyData& a : arrays) {
    if (a.shape.size() == 1) {
      if (!labels.where.empty())
        throw Error(a.where + ": a second labels array after " + labels.where);
      labels = std::move(a);
    } else if (a.shape.size() == 3 || a.shape.size() == 4) {
      if (!images.where.empty())
        throw Error(a.where + ": a second images array after " + images.where);
      if (a.descr != "u1") throw Error(a.where + ": images must be uint8 (|u1), not " + a.descr);
      images = std::move(a);
    } else {
      throw Error(a.where + ": an array of rank " + std::to_string(a.shape.size()) +
                  " is neither images [N, H, W(, C)] nor labels [N]");
    }
  }
  if (images.where.empty())
    throw Error("no images array [N, H, W] or [N, H, W, C] among the inputs");
  Source s;
  s.size = images.shape[0];
  s.height = images.shape[1];
  s.width = images.shape[2];
  s.channels = images.shape.size() == 4 ? images.shape[3] : 1;
  if (s.size == 0 || s.height == 0 || s.width == 0 || s.channels == 0)
    throw Error(images.where + ": the images array is empty");
  s.files = inputs;
  if (!labels.where.empty()) {
    if (labels.shape[0] != s.size)
      throw Error(labels.where + ": " + std::to_string(labels.shape[0]) + " labels for " +
                  std::to_string(s.size) + " images in " + images.where);
    s.labels = data::int64_values(labels);
    for (const int64_t l : s.labels)
      if (l < 0) throw Error(labels.where + ": negative label " + std::to_string(l));
  }
  s.read = memory_reader(std::move(images.data), s.height, s.width, s.channels);
  s.describe = describe_in(s.files);
  return s;
}

}  // namespace difftrain::h5shard
