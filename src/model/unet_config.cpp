#include "model/unet_config.hpp"

#include <c10/util/StringUtil.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace difftrain::model {
namespace {

std::string field(const char* name, int64_t value) {
  return std::string("UNetConfig.") + name + " = " + std::to_string(value);
}

void require_positive(const char* name, int64_t value) {
  if (value <= 0) throw std::invalid_argument(field(name, value) + " must be positive");
}

bool contains(const std::vector<int64_t>& values, int64_t v) {
  return std::find(values.begin(), values.end(), v) != values.end();
}

// The channels and resolution of every kind of attention block: the levels listed in
// attention_resolutions (input and output side alike), and the middle block.
void check_heads(const UNetConfig& c) {
  if (c.num_head_channels == -1) {
    require_positive("num_heads", c.num_heads);
  } else if (c.num_head_channels <= 0) {
    throw std::invalid_argument(field("num_head_channels", c.num_head_channels) +
                                " must be positive, or -1 to use num_heads");
  }
  const auto sizes = feature_map_sizes(c);
  const auto levels = static_cast<int64_t>(c.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    const bool middle = level == levels - 1;
    if (!middle && !contains(c.attention_resolutions, sizes[level])) continue;
    const int64_t ch = level_channels(c, static_cast<size_t>(level));
    const bool per_head = c.num_head_channels != -1;
    if (ch % (per_head ? c.num_head_channels : c.num_heads) == 0) continue;
    const std::string where =
        contains(c.attention_resolutions, sizes[level])
            ? "the attention blocks at resolution " + std::to_string(sizes[level])
            : "the middle block's attention (resolution " + std::to_string(sizes[level]) + ")";
    throw std::invalid_argument((per_head ? field("num_head_channels", c.num_head_channels)
                                          : field("num_heads", c.num_heads)) +
                                " does not divide the " + std::to_string(ch) + " channels of " +
                                where);
  }
}

}  // namespace

std::vector<int64_t> feature_map_sizes(const UNetConfig& c) {
  std::vector<int64_t> sizes;
  int64_t size = c.image_size;
  for (size_t level = 0; level < c.channel_mult.size(); ++level, size /= 2)
    sizes.push_back(size);
  return sizes;
}

int64_t stem_in_channels(const UNetConfig& c) {
  return c.low_res_size > 0 ? 2 * c.in_channels : c.in_channels;
}

int64_t level_channels(const UNetConfig& c, size_t level) {
  return static_cast<int64_t>(static_cast<double>(c.model_channels) * c.channel_mult.at(level));
}

int64_t attention_heads(const UNetConfig& c, int64_t channels) {
  return c.num_head_channels == -1 ? c.num_heads : channels / c.num_head_channels;
}

void validate(const UNetConfig& c) {
  require_positive("image_size", c.image_size);
  require_positive("in_channels", c.in_channels);
  require_positive("model_channels", c.model_channels);
  require_positive("out_channels", c.out_channels);
  if (c.num_res_blocks < 0)
    throw std::invalid_argument(field("num_res_blocks", c.num_res_blocks) +
                                " must be non-negative");
  if (!(c.dropout >= 0.0 && c.dropout < 1.0))
    throw std::invalid_argument("UNetConfig.dropout = " + std::to_string(c.dropout) +
                                " must be in [0, 1)");
  if (c.num_classes < 0)
    throw std::invalid_argument(field("num_classes", c.num_classes) +
                                " must be non-negative (0 = unconditional)");
  if (c.low_res_size < 0)
    throw std::invalid_argument(field("low_res_size", c.low_res_size) +
                                " must be non-negative (0 = not an upsampler)");
  if (c.low_res_noise && c.low_res_size == 0)
    throw std::invalid_argument(
        "UNetConfig.low_res_noise needs an upsampler (low_res_size > 0): only a low-resolution "
        "input can be noised");
  if (c.null_class && c.num_classes == 0)
    throw std::invalid_argument(
        "UNetConfig.null_class needs a class-conditional model (num_classes > 0)");
  if (c.channel_mult.empty())
    throw std::invalid_argument(
        "UNetConfig.channel_mult is empty: give one multiplier per resolution level, e.g. "
        "(1, 2, 2, 2)");
  // Every GroupNorm normalises one level's channels (the stem's are level 0's).
  for (size_t i = 0; i < c.channel_mult.size(); ++i) {
    const double mult = c.channel_mult[i];
    const std::string name = c10::str("UNetConfig.channel_mult[", i, "] = ", mult);
    if (!(mult > 0)) throw std::invalid_argument(name + " must be positive");
    const double channels = static_cast<double>(c.model_channels) * mult;
    const std::string product =
        c10::str(" gives model_channels ", c.model_channels, " x ", mult, " = ", channels);
    if (channels != std::floor(channels) || !(channels < 1e15))
      throw std::invalid_argument(name + product + " channels, not a whole number");
    if (static_cast<int64_t>(channels) % kGroupNormGroups != 0)
      throw std::invalid_argument(name + product + " channels, not divisible by the " +
                                  std::to_string(kGroupNormGroups) + " GroupNorm groups");
  }

  // The skip connections concatenate maps of equal size, so every downsampling must be exact.
  const auto halvings = static_cast<int64_t>(c.channel_mult.size()) - 1;
  if (halvings > 30)
    throw std::invalid_argument("UNetConfig.channel_mult has " +
                                std::to_string(c.channel_mult.size()) +
                                " levels, more than an image can be halved");
  const int64_t factor = int64_t{1} << halvings;
  if (c.image_size % factor != 0)
    throw std::invalid_argument(field("image_size", c.image_size) + " does not halve cleanly " +
                                std::to_string(halvings) + " times (channel_mult has " +
                                std::to_string(c.channel_mult.size()) +
                                " levels); the next size that does is " +
                                std::to_string((c.image_size / factor + 1) * factor));

  const auto sizes = feature_map_sizes(c);
  for (const int64_t res : c.attention_resolutions)
    if (!contains(sizes, res))
      throw std::invalid_argument(
          "UNetConfig.attention_resolutions contains " + std::to_string(res) +
          ", which is not a feature-map size of this UNet; the sizes for image_size " +
          std::to_string(c.image_size) + " with " + std::to_string(sizes.size()) + " levels are " +
          c10::Join(", ", sizes));

  check_heads(c);
}

Pool parse_pool(std::string_view name) {
  for (const Pool p : {Pool::adaptive, Pool::attention})
    if (name == to_string(p)) return p;
  throw std::invalid_argument("unknown pool '" + std::string(name) +
                              "': valid pools are adaptive, attention");
}

std::string to_string(Pool pool) {
  return pool == Pool::adaptive ? "adaptive" : "attention";
}

}  // namespace difftrain::model
