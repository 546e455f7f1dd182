// PNG (libpng) and JPEG (libjpeg) files to and from 8-bit HWC pixels.
#pragma once

#include <cstdint>
#include <string>

#include "source.hpp"

namespace difftrain::h5shard {

// Decodes a PNG or JPEG file (told apart by its signature, not its name) to 1 (gray) or 3 (RGB)
// channels; an alpha channel is dropped. Throws data::Error naming the file.
Image decode_image(const std::string& path, int64_t channels);

// Writes 1- or 3-channel HWC pixels as a PNG.
void write_png(const std::string& path, const Image& image);

}  // namespace difftrain::h5shard
