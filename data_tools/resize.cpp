#include "resize.hpp"

#include <stb_image_resize.h>

#include <algorithm>

#include "data/error.hpp"

namespace difftrain::h5shard {

Image square_resize(const Image& image, int64_t size) {
  const int64_t side = std::min(image.height, image.width);
  const int64_t top = (image.height - side) / 2;
  const int64_t left = (image.width - side) / 2;
  const int64_t stride = image.width * image.channels;
  const uint8_t* crop = image.pixels.data() + top * stride + left * image.channels;
  Image out{size, size, image.channels, {}};
  out.pixels.resize(static_cast<std::size_t>(size * size * image.channels));
  if (side == size) {
    for (int64_t y = 0; y < size; ++y)
      std::copy_n(crop + y * stride, size * image.channels,
                  out.pixels.data() + y * size * image.channels);
    return out;
  }
  const stbir_filter filter = side > size ? STBIR_FILTER_BOX : STBIR_FILTER_CATMULLROM;
  if (!stbir_resize_uint8_generic(crop, static_cast<int>(side), static_cast<int>(side),
                                  static_cast<int>(stride), out.pixels.data(),
                                  static_cast<int>(size), static_cast<int>(size), 0,
                                  static_cast<int>(image.channels), STBIR_ALPHA_CHANNEL_NONE, 0,
                                  STBIR_EDGE_CLAMP, filter, STBIR_COLORSPACE_LINEAR, nullptr))
    throw data::Error("resizing a " + std::to_string(side) + "x" + std::to_string(side) +
                      " image to " + std::to_string(size) + " failed");
  return out;
}

}  // namespace difftrain::h5shard
