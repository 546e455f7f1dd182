// The low-resolution images an upsampler starts from (`difftrain sample --low-res`): what a base
// model's sampling wrote, the .npz of improved- or guided-diffusion's image_sample.py (what their
// super_res_sample.py reads) or of `difftrain sample`, or its HDF5 shard; or any shard or shard
// set of images, e.g. a test split.
// Images of the upsampler's input size are used as they are; images of its output size are
// area-downsampled as in training, so that an upsampler can be judged on real images.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "cli/trained_model.hpp"

namespace difftrain::cli {

struct LowResImages {
  at::Tensor images;        // float32 [n, C, low_res_size, low_res_size] in [-1, 1], CPU
  at::Tensor labels;        // int64 [n], or undefined when the file has none
  int64_t stored_size = 0;  // the size of the images in the file, before any downsampling
};

// The first min(count, all) images of `path`: an .npz (arr_0 images, arr_1 labels), a shard file
// (.h5) or a manifest.json (or its directory). Throws std::invalid_argument naming the file when
// its images do not fit the upsampler `m` (channels, size), data::Error when it cannot be read.
LowResImages read_low_res_images(const std::string& path, int64_t count, const TrainedModel& m);

}  // namespace difftrain::cli
