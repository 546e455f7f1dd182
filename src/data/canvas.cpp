#include "data/canvas.hpp"

#include <ATen/ATen.h>

#include <array>
#include <string>

#include "data/error.hpp"

namespace difftrain::data {
namespace {

std::array<float, 256> pixel_table() {
  std::array<float, 256> t{};
  for (int v = 0; v < 256; ++v)
    t[static_cast<std::size_t>(v)] = static_cast<float>(v) / 127.5f - 1;
  return t;
}

}  // namespace

Canvas centred_canvas(int64_t height, int64_t width, int64_t channels, int64_t size) {
  if (size < height || size < width)
    throw Error("a " + std::to_string(height) + "x" + std::to_string(width) +
                " image does not fit a canvas of " + std::to_string(size) + "x" +
                std::to_string(size));
  return {height, width, channels, size, size, (size - height) / 2, (size - width) / 2};
}

Canvas stored_canvas(int64_t height, int64_t width, int64_t channels) {
  return {height, width, channels, height, width, 0, 0};
}

void to_network_pixels(const uint8_t* src, float* dst, const Canvas& g, bool flip) {
  static const std::array<float, 256> table = pixel_table();
  const int64_t plane = g.out_height * g.out_width;
  for (int64_t y = 0; y < g.height; ++y) {
    const uint8_t* row = src + y * g.width * g.channels;
    for (int64_t c = 0; c < g.channels; ++c) {
      float* out = dst + c * plane + (g.top + y) * g.out_width + g.left;
      if (flip) {
        for (int64_t x = 0; x < g.width; ++x)
          out[g.width - 1 - x] = table[row[x * g.channels + c]];
      } else {
        for (int64_t x = 0; x < g.width; ++x)
          out[x] = table[row[x * g.channels + c]];
      }
    }
  }
}

at::Tensor to_network_pixels(const uint8_t* src, int64_t n, const Canvas& g) {
  at::Tensor x = at::full({n, g.channels, g.out_height, g.out_width}, -1.0f);
  const int64_t in = g.height * g.width * g.channels, out = g.channels * g.out_height * g.out_width;
  for (int64_t i = 0; i < n; ++i)
    to_network_pixels(src + i * in, x.data_ptr<float>() + i * out, g);
  return x;
}

at::Tensor to_stored_pixels(const at::Tensor& x, const Canvas& g) {
  // [-1, 1] -> 0..255, rounded: the inverse of k / 127.5 - 1.
  const at::Tensor u8 =
      ((x.to(at::kCPU, at::kFloat) + 1) * 127.5).round().clamp(0, 255).to(at::kByte);
  return u8.narrow(2, g.top, g.height)
      .narrow(3, g.left, g.width)
      .permute({0, 2, 3, 1})
      .contiguous();
}

}  // namespace difftrain::data
