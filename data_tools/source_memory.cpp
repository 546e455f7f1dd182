#include <memory>

#include "source.hpp"

namespace difftrain::h5shard {

std::function<Image(int64_t)> memory_reader(std::vector<uint8_t> pixels, int64_t height,
                                            int64_t width, int64_t channels) {
  auto data = std::make_shared<const std::vector<uint8_t>>(std::move(pixels));
  return [data, height, width, channels](int64_t i) {
    const int64_t n = height * width * channels;
    const auto* first = data->data() + i * n;
    return Image{height, width, channels, std::vector<uint8_t>(first, first + n)};
  };
}

std::function<std::string(int64_t)> describe_in(const std::vector<std::string>& files) {
  std::string where;
  for (const std::string& f : files)
    where += (where.empty() ? "" : ", ") + f;
  return [where](int64_t i) { return where + ": sample " + std::to_string(i); };
}

}  // namespace difftrain::h5shard
