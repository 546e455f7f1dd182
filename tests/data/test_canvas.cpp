// The canvas the loader, eval and sample share: a stored image centred on the network's input,
// padded with -1, converted k / 127.5 - 1, and generated images cropped and rounded back.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "data/canvas.hpp"
#include "data/error.hpp"

namespace difftrain::data {
namespace {

TEST(Canvas, CentresPadsAndRoundTripsStoredPixels) {
  const Canvas g = centred_canvas(3, 2, 2, 5);  // 3 x 2 x 2 channels on 5 x 5
  EXPECT_EQ(g.top, 1);
  EXPECT_EQ(g.left, 1);
  const at::Tensor stored = at::arange(2 * 3 * 2 * 2, at::kByte).mul_(10).view({2, 3, 2, 2});
  const at::Tensor x = to_network_pixels(stored.data_ptr<uint8_t>(), 2, g);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{2, 2, 5, 5}));
  // Pixel (y, x, c) of image n lands at [n, c, top + y, left + x], as k / 127.5 - 1.
  EXPECT_FLOAT_EQ(x[1][1][1 + 2][1 + 1].item<float>(),
                  static_cast<float>(stored[1][2][1][1].item<uint8_t>()) / 127.5f - 1);
  EXPECT_EQ(x.eq(-1).sum().item<int64_t>(), 2 * 2 * (25 - 6) + stored.eq(0).sum().item<int64_t>());
  EXPECT_TRUE(at::equal(to_stored_pixels(x, g), stored));
  EXPECT_THROW(centred_canvas(6, 2, 1, 5), Error);
  const Canvas same = stored_canvas(3, 2, 2);
  EXPECT_TRUE(at::equal(
      to_stored_pixels(to_network_pixels(stored.data_ptr<uint8_t>(), 2, same), same), stored));
}

TEST(Canvas, FlipMirrorsTheRow) {
  const Canvas g = stored_canvas(1, 3, 1);
  const uint8_t row[3] = {0, 51, 255};
  float out[3];
  to_network_pixels(row, out, g, /*flip=*/true);
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  EXPECT_FLOAT_EQ(out[2], -1.0f);
}

}  // namespace
}  // namespace difftrain::data
