// The parameter counts of the published Improved-DDPM UNets, whole and by part, and of
// guided-diffusion's ImageNet 64x64 model.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <string>

#include <torch/torch.h>

#include "model/parameter_count.hpp"
#include "model_test_util.hpp"

namespace difftrain::model {
namespace {

using test::cifar10_config;

std::map<std::string, int64_t> as_map(const std::vector<std::pair<std::string, int64_t>>& parts) {
  return {parts.begin(), parts.end()};
}

int64_t sum(const std::vector<std::pair<std::string, int64_t>>& parts) {
  return std::accumulate(parts.begin(), parts.end(), int64_t{0},
                         [](int64_t acc, const auto& part) { return acc + part.second; });
}

TEST(ParameterCount, Cifar10Hybrid) {
  const UNet model(cifar10_config());
  EXPECT_EQ(parameter_count(model), 52'546'438);

  const auto parts = parameter_breakdown(model);
  // time_embed, 16 input blocks, middle_block, 16 output blocks, out.
  ASSERT_EQ(parts.size(), 1u + 16u + 1u + 16u + 1u);
  EXPECT_EQ(parts.front().first, "time_embed");
  EXPECT_EQ(parts[1].first, "input_blocks.0");
  EXPECT_EQ(parts[17].first, "middle_block");
  EXPECT_EQ(parts[18].first, "output_blocks.0");
  EXPECT_EQ(parts.back().first, "out");
  EXPECT_EQ(sum(parts), 52'546'438);

  auto by_name = as_map(parts);
  EXPECT_EQ(by_name["time_embed"], 328'704);
  EXPECT_EQ(by_name["input_blocks.0"], 3'584);
  for (const char* level0 : {"input_blocks.1", "input_blocks.2", "input_blocks.3"})
    EXPECT_EQ(by_name[level0], 427'008) << level0;
  EXPECT_EQ(by_name["middle_block"], 3'151'360);
  EXPECT_EQ(by_name["out"], 7'174);
  // Cross-checked against improved-diffusion's UNetModel: the first Downsample, the first
  // level-1 block (ResBlock 128 -> 256 and attention at 16x16), the first output block (ResBlock
  // 256 + 256 -> 256 at 4x4) and the last (ResBlock 128 + 128 -> 128 at 32x32).
  EXPECT_EQ(by_name["input_blocks.5"], 1'445'376);
  EXPECT_EQ(by_name["input_blocks.4"], 147'584);
  EXPECT_EQ(by_name["output_blocks.0"], 2'165'504);
  EXPECT_EQ(by_name["output_blocks.15"], 607'616);
}

TEST(ParameterCount, ClassConditionalAddsLabelEmbedding) {
  auto config = cifar10_config();
  config.num_classes = 10;
  const UNet model(config);
  const auto parts = parameter_breakdown(model);
  EXPECT_EQ(parts[1], (std::pair<std::string, int64_t>{"label_emb", 10 * 512}));
  EXPECT_EQ(parameter_count(model), 52'546'438 + 10 * 512);
}

TEST(ParameterCount, ImageNet64) {
  auto config = cifar10_config();
  config.image_size = 64;
  config.channel_mult = {1, 2, 3, 4};
  config.dropout = 0.0;
  const UNet model(config);
  EXPECT_EQ(parameter_count(model), 121'063'942);
  EXPECT_EQ(sum(parameter_breakdown(model)), 121'063'942);
}

// guided-diffusion's class-conditional ImageNet 64x64 model (its README's flags: 192 channels,
// heads of 64 channels, attention at 32, 16 and 8, up / down ResBlocks, the new attention order,
// 1000 classes): Dhariwal & Nichol give 296M; bench/baseline's PyTorch UNet, written
// from guided-diffusion's unet.py, counts the same 295,904,454.
TEST(ParameterCount, GuidedDiffusionImageNet64Conditional) {
  UNetConfig config{.image_size = 64,
                    .in_channels = 3,
                    .model_channels = 192,
                    .out_channels = 6,
                    .num_res_blocks = 3,
                    .attention_resolutions = {32, 16, 8},
                    .dropout = 0.1,
                    .channel_mult = {1, 2, 3, 4},
                    .num_classes = 1000,
                    .num_head_channels = 64,
                    .resblock_updown = true,
                    .use_new_attention_order = true};
  const UNet model(config);
  EXPECT_EQ(parameter_count(model), 295'904'454);
  config.resblock_updown = false;  // Downsample / Upsample convs in place of the ResBlocks
  EXPECT_LT(parameter_count(UNet(config)), 295'904'454);
}

// Parameter names and shapes follow improved-diffusion's state dict, so weights copy name for
// name. (CIFAR-10 model: 446 tensors, as improved-diffusion's state_dict().)
TEST(ParameterCount, StateDictNamesMatchImprovedDiffusion) {
  const UNet model(cifar10_config());
  const auto params = model->named_parameters();
  EXPECT_EQ(params.size(), 446u);
  const std::map<std::string, std::vector<int64_t>> expected{
      {"time_embed.0.weight", {512, 128}},
      {"time_embed.2.bias", {512}},
      {"input_blocks.0.0.weight", {128, 3, 3, 3}},
      {"input_blocks.1.0.in_layers.0.weight", {128}},
      {"input_blocks.1.0.in_layers.2.weight", {128, 128, 3, 3}},
      {"input_blocks.1.0.emb_layers.1.weight", {256, 512}},
      {"input_blocks.1.0.out_layers.0.bias", {128}},
      {"input_blocks.1.0.out_layers.3.weight", {128, 128, 3, 3}},
      {"input_blocks.4.0.op.weight", {128, 128, 3, 3}},
      {"input_blocks.5.0.skip_connection.weight", {256, 128, 1, 1}},
      {"input_blocks.5.1.norm.weight", {256}},
      {"input_blocks.5.1.qkv.weight", {768, 256, 1}},
      {"input_blocks.5.1.proj_out.weight", {256, 256, 1}},
      {"middle_block.0.in_layers.2.weight", {256, 256, 3, 3}},
      {"middle_block.1.qkv.bias", {768}},
      {"middle_block.2.out_layers.3.bias", {256}},
      {"output_blocks.0.0.skip_connection.weight", {256, 512, 1, 1}},
      {"output_blocks.3.1.conv.weight", {256, 256, 3, 3}},
      {"output_blocks.7.2.conv.weight", {256, 256, 3, 3}},
      {"output_blocks.4.1.qkv.weight", {768, 256, 1}},
      {"output_blocks.15.0.skip_connection.weight", {128, 256, 1, 1}},
      {"out.0.weight", {128}},
      {"out.2.weight", {6, 128, 3, 3}},
      {"out.2.bias", {6}}};
  for (const auto& [name, shape] : expected) {
    const auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    EXPECT_EQ(p->sizes(), shape) << name;
  }
}

}  // namespace
}  // namespace difftrain::model
