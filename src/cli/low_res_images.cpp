#include "cli/low_res_images.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "cli/stored_images.hpp"
#include "data/canvas.hpp"

namespace difftrain::cli {

LowResImages read_low_res_images(const std::string& path, int64_t count, const TrainedModel& m) {
  const int64_t low = m.denoiser.net->config().low_res_size, size = m.shape.image_size,
                C = m.shape.channels;
  const StoredImages s = read_stored_images(path, 0, count);
  const int64_t n = s.pixels.size(0), H = s.pixels.size(1), W = s.pixels.size(2),
                channels = s.pixels.size(3);
  if (n == 0) throw std::invalid_argument(path + ": holds no images");
  if (channels != C || H != W || (H != low && H != size))
    throw std::invalid_argument(fmt::format(
        "{}: holds {}x{}x{} images; the upsampler takes {}x{}x{} (or {}x{}x{}, which it "
        "area-downsamples as in training)",
        path, channels, H, W, C, low, low, C, size, size));

  at::Tensor x = data::to_network_pixels(s.pixels.contiguous().data_ptr<uint8_t>(), n,
                                         data::stored_canvas(H, W, C));
  if (H == size) x = m.denoiser.low_res_of(x);
  return {x, s.labels, H};
}

}  // namespace difftrain::cli
