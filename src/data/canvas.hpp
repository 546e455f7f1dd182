// Where a stored image sits in the network's square canvas, and the conversions between the two:
// the loader, `eval` and `sample` share them, so that a pixel means the same everywhere. A smaller
// image is centred and the rest padded with -1 (black): data.pad_to (28 -> 32 for the UNet).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace difftrain::data {

struct Canvas {
  int64_t height = 0, width = 0, channels = 0;  // the stored image, HWC uint8
  int64_t out_height = 0, out_width = 0;        // the canvas
  int64_t top = 0, left = 0;                    // the image's place in it
};

// The stored h x w image centred on a size x size canvas; throws data::Error when it is larger.
Canvas centred_canvas(int64_t height, int64_t width, int64_t channels, int64_t size);
// The stored image as it is (no padding).
Canvas stored_canvas(int64_t height, int64_t width, int64_t channels);

// One stored sample (uint8, HWC) into `dst` (float, CHW on the canvas; the padding must already
// be -1): k / 127.5 - 1, computed as torch computes it in float32, so that batches equal those of
// a reference pipeline bit for bit. `flip` mirrors it horizontally.
void to_network_pixels(const uint8_t* src, float* dst, const Canvas& canvas, bool flip = false);

// n stored samples, contiguous uint8 HWC, as the network sees them: float [n, C, out_h, out_w].
at::Tensor to_network_pixels(const uint8_t* src, int64_t n, const Canvas& canvas);

// The inverse for generated images: float [n, C, out_h, out_w] in [-1, 1] -> uint8 [n, h, w, C] of
// the stored size, rounded, clamped and cropped from the canvas.
at::Tensor to_stored_pixels(const at::Tensor& x, const Canvas& canvas);

}  // namespace difftrain::data
