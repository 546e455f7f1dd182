#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "model/unet.hpp"
#include "model/unet_config.hpp"
#include "model_test_util.hpp"

namespace difftrain::model {
namespace {

using test::cifar10_config;

// The message of the std::invalid_argument validate(config) throws ("" if none).
std::string error_of(const UNetConfig& config) {
  try {
    validate(config);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(UNetConfig, PublishedConfigsAreValid) {
  EXPECT_EQ(error_of(cifar10_config()), "");
  auto imagenet = cifar10_config();
  imagenet.image_size = 64;
  imagenet.channel_mult = {1, 2, 3, 4};
  EXPECT_EQ(error_of(imagenet), "");
  EXPECT_EQ(feature_map_sizes(cifar10_config()), (std::vector<int64_t>{32, 16, 8, 4}));
}

TEST(UNetConfig, ChannelsNotDivisibleByGroupNormGroups) {
  auto c = cifar10_config();
  c.model_channels = 48;
  EXPECT_EQ(error_of(c),
            "UNetConfig.channel_mult[0] = 1 gives model_channels 48 x 1 = 48 channels, not "
            "divisible by the 32 GroupNorm groups");
  c.channel_mult = {2, 2, 2, 2};  // every level has 96 channels
  EXPECT_EQ(error_of(c), "");
}

// guided-diffusion's 512 px models start at half of model_channels: int(0.5 * 256) = 128.
TEST(UNetConfig, FractionalMultipliersGiveWholeChannels) {
  auto c = cifar10_config();
  c.model_channels = 256;
  c.channel_mult = {0.5, 1, 1.5, 2};
  EXPECT_EQ(error_of(c), "");
  EXPECT_EQ(level_channels(c, 0), 128);
  EXPECT_EQ(level_channels(c, 2), 384);
  c.channel_mult = {0.3, 1, 1, 2};
  EXPECT_EQ(error_of(c),
            "UNetConfig.channel_mult[0] = 0.3 gives model_channels 256 x 0.3 = 76.8 channels, not "
            "a whole number");
  c.model_channels = 192;
  c.channel_mult = {0.25, 1, 1, 2};
  EXPECT_EQ(error_of(c),
            "UNetConfig.channel_mult[0] = 0.25 gives model_channels 192 x 0.25 = 48 channels, "
            "not divisible by the 32 GroupNorm groups");
}

TEST(UNetConfig, AttentionResolutionNotAFeatureMapSize) {
  auto c = cifar10_config();
  c.attention_resolutions = {16, 12};
  EXPECT_EQ(error_of(c),
            "UNetConfig.attention_resolutions contains 12, which is not a feature-map size of "
            "this UNet; the sizes for image_size 32 with 4 levels are 32, 16, 8, 4");
}

TEST(UNetConfig, ImageSizeDoesNotHalveCleanly) {
  auto c = cifar10_config();
  c.image_size = 28;  // Fashion-MNIST without padding
  c.attention_resolutions = {};
  EXPECT_EQ(error_of(c),
            "UNetConfig.image_size = 28 does not halve cleanly 3 times (channel_mult has 4 "
            "levels); the next size that does is 32");
  c.channel_mult = {1, 2, 2};  // 28 -> 14 -> 7 is fine
  EXPECT_EQ(error_of(c), "");
}

TEST(UNetConfig, HeadsNotDividingChannels) {
  auto c = cifar10_config();
  c.num_heads = 3;
  EXPECT_EQ(error_of(c),
            "UNetConfig.num_heads = 3 does not divide the 256 channels of the attention blocks "
            "at resolution 16");
  c.num_heads = 4;
  c.num_head_channels = 48;
  EXPECT_EQ(error_of(c),
            "UNetConfig.num_head_channels = 48 does not divide the 256 channels of the attention "
            "blocks at resolution 16");
  c.num_head_channels = 64;
  EXPECT_EQ(error_of(c), "");
  EXPECT_EQ(attention_heads(c, 256), 4);
  // The middle block always has attention, at the deepest level.
  c = cifar10_config();
  c.attention_resolutions = {};
  c.model_channels = 96;
  c.channel_mult = {1, 2};
  c.num_heads = 5;
  EXPECT_EQ(error_of(c),
            "UNetConfig.num_heads = 5 does not divide the 192 channels of the middle block's "
            "attention (resolution 16)");
}

TEST(UNetConfig, OutOfRangeScalars) {
  auto c = cifar10_config();
  c.image_size = 0;
  EXPECT_EQ(error_of(c), "UNetConfig.image_size = 0 must be positive");
  c = cifar10_config();
  c.out_channels = -6;
  EXPECT_EQ(error_of(c), "UNetConfig.out_channels = -6 must be positive");
  c = cifar10_config();
  c.dropout = 1.0;
  EXPECT_EQ(error_of(c), "UNetConfig.dropout = 1.000000 must be in [0, 1)");
  c = cifar10_config();
  c.num_classes = -1;
  EXPECT_EQ(error_of(c), "UNetConfig.num_classes = -1 must be non-negative (0 = unconditional)");
  c = cifar10_config();
  c.null_class = true;
  EXPECT_EQ(error_of(c), "UNetConfig.null_class needs a class-conditional model (num_classes > 0)");
  c = cifar10_config();
  c.channel_mult = {};
  EXPECT_EQ(error_of(c),
            "UNetConfig.channel_mult is empty: give one multiplier per resolution level, e.g. "
            "(1, 2, 2, 2)");
  c = cifar10_config();
  c.channel_mult = {1, 0};
  EXPECT_EQ(error_of(c), "UNetConfig.channel_mult[1] = 0 must be positive");
  c = cifar10_config();
  c.num_head_channels = 0;
  EXPECT_EQ(error_of(c),
            "UNetConfig.num_head_channels = 0 must be positive, or -1 to use num_heads");
}

TEST(UNetConfig, ConstructorValidates) {
  auto c = cifar10_config();
  c.model_channels = 40;
  EXPECT_THROW(UNet{c}, std::invalid_argument);
}

}  // namespace
}  // namespace difftrain::model
