#include "data/png_grid.hpp"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "data/error.hpp"

namespace difftrain::data {

void write_png(const std::string& path, const uint8_t* pixels, int64_t height, int64_t width,
               int64_t channels) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width);
  image.height = static_cast<png_uint_32>(height);
  switch (channels) {
    case 1:
      image.format = PNG_FORMAT_GRAY;
      break;
    case 3:
      image.format = PNG_FORMAT_RGB;
      break;
    case 4:
      image.format = PNG_FORMAT_RGBA;
      break;
    default:
      throw Error(path + ": cannot write " + std::to_string(channels) +
                  "-channel images as PNG (1, 3 or 4 channels)");
  }
  if (height <= 0 || width <= 0) throw Error(path + ": cannot write an empty image as PNG");
  if (!png_image_write_to_file(&image, path.c_str(), 0, pixels,
                               static_cast<png_int_32>(width * channels), nullptr))
    throw Error(path + ": cannot write PNG: " + image.message);
}

void write_png_grid(const std::string& path, const uint8_t* images, int64_t n, int64_t height,
                    int64_t width, int64_t channels, int64_t columns, int64_t gap) {
  if (n <= 0) throw Error(path + ": no images to write");
  if (columns <= 0) columns = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
  columns = std::min(columns, n);
  const int64_t rows = (n + columns - 1) / columns;
  const int64_t grid_h = rows * (height + gap) + gap, grid_w = columns * (width + gap) + gap;
  const int64_t row_bytes = width * channels;
  std::vector<uint8_t> grid(static_cast<std::size_t>(grid_h * grid_w * channels), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t top = gap + (i / columns) * (height + gap);
    const int64_t left = gap + (i % columns) * (width + gap);
    for (int64_t y = 0; y < height; ++y)
      std::memcpy(grid.data() + ((top + y) * grid_w + left) * channels,
                  images + (i * height + y) * row_bytes, static_cast<std::size_t>(row_bytes));
  }
  write_png(path, grid.data(), grid_h, grid_w, channels);
}

}  // namespace difftrain::data
