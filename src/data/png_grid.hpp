// 8-bit images as PNG files (libpng): one image, or a batch tiled as a grid for a quick look.
#pragma once

#include <cstdint>
#include <string>

namespace difftrain::data {

// pixels: height * width * channels bytes, HWC, channels 1 (gray), 3 (RGB) or 4 (RGBA). Throws
// data::Error naming the file.
void write_png(const std::string& path, const uint8_t* pixels, int64_t height, int64_t width,
               int64_t channels);

// images: n HWC images back to back, tiled row by row on a black canvas with `gap` pixels
// between and around them; columns = 0 picks ceil(sqrt(n)).
void write_png_grid(const std::string& path, const uint8_t* images, int64_t n, int64_t height,
                    int64_t width, int64_t channels, int64_t columns = 0, int64_t gap = 2);

}  // namespace difftrain::data
