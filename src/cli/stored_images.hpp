// Images as files hold them, for the subcommands that take images rather than a training set:
// the .npz of `difftrain sample` or of improved- / guided-diffusion's image_sample.py (arr_0
// images, arr_1 labels), a difftrain shard (.h5), or a shard set (manifest.json or its directory).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

namespace difftrain::cli {

struct StoredImages {
  at::Tensor pixels;  // uint8 [n, H, W, C], CPU
  at::Tensor labels;  // int64 [n], or undefined when the file has none
  int64_t total = 0;  // the images in the file
};

// Which images to read, [begin, begin + count), given how many the file holds: one read of the
// file serves both (an .npz is read whole to count it).
using ImageRange = std::function<std::pair<int64_t, int64_t>(int64_t total)>;

// The images `range` picks from `path`, clipped to what it holds. Throws std::invalid_argument
// naming the file when it holds no images in the expected layout, data::Error when it cannot be
// read.
StoredImages read_stored_images(const std::string& path, const ImageRange& range);
// Images [begin, begin + count).
StoredImages read_stored_images(const std::string& path, int64_t begin, int64_t count);

}  // namespace difftrain::cli
