// Center-crop and resample (stb_image_resize): shrinking averages areas (box filter), enlarging
// uses Catmull-Rom; never nearest-neighbour.
#pragma once

#include <cstdint>

#include "source.hpp"

namespace difftrain::h5shard {

// The largest centered square of image, resampled to size x size.
Image square_resize(const Image& image, int64_t size);

}  // namespace difftrain::h5shard
