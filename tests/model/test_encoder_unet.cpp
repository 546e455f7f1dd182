// guided-diffusion's EncoderUNet (the noisy classifier): its state-dict names and shapes, the
// attention pool against the attention formula written out, logits per sample, and its input
// checks.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>

#include "model/encoder_unet.hpp"
#include "model_test_util.hpp"

namespace difftrain::model {
namespace {

// 16x16 RGB, two levels, attention at 8x8, 5 classes, guided-diffusion's classifier options.
UNetConfig tiny_classifier() {
  UNetConfig c = test::tiny_config();
  c.out_channels = 5;
  c.num_head_channels = 32;
  c.resblock_updown = true;
  return c;
}

TEST(EncoderUNet, StateDictHasGuidedDiffusionsNamesAndShapes) {
  EncoderUNet net(tiny_classifier(), Pool::attention);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& p : net->named_parameters())
    shapes[p.key()] = p.value().sizes().vec();
  // The input side as the UNet's: stem, ResBlock, down ResBlock, ResBlock (32 -> 64) + attention.
  EXPECT_EQ(shapes.at("time_embed.0.weight"), (std::vector<int64_t>{128, 32}));
  EXPECT_EQ(shapes.at("input_blocks.0.0.weight"), (std::vector<int64_t>{32, 3, 3, 3}));
  EXPECT_TRUE(shapes.count("input_blocks.2.0.in_layers.2.weight"));  // the down ResBlock
  EXPECT_EQ(shapes.at("input_blocks.3.0.skip_connection.weight"),
            (std::vector<int64_t>{64, 32, 1, 1}));
  EXPECT_EQ(shapes.at("input_blocks.3.1.qkv.weight"), (std::vector<int64_t>{192, 64, 1}));
  EXPECT_TRUE(shapes.count("middle_block.2.out_layers.3.weight"));
  // out = [GroupNorm32, SiLU, AttentionPool2d(8, 64, 2 heads, 5)]: 8x8 + the mean position.
  EXPECT_EQ(shapes.at("out.0.weight"), (std::vector<int64_t>{64}));
  EXPECT_EQ(shapes.at("out.2.positional_embedding"), (std::vector<int64_t>{64, 65}));
  EXPECT_EQ(shapes.at("out.2.qkv_proj.weight"), (std::vector<int64_t>{192, 64, 1}));
  EXPECT_EQ(shapes.at("out.2.c_proj.weight"), (std::vector<int64_t>{5, 64, 1}));
  EXPECT_FALSE(shapes.count("output_blocks.0.0.in_layers.0.weight"));
  EXPECT_FALSE(shapes.count("label_emb.weight"));

  EncoderUNet adaptive(tiny_classifier(), Pool::adaptive);
  std::map<std::string, std::vector<int64_t>> adaptive_shapes;
  for (const auto& p : adaptive->named_parameters())
    adaptive_shapes[p.key()] = p.value().sizes().vec();
  // out = [GroupNorm32, SiLU, AdaptiveAvgPool2d, conv1x1 (zero), Flatten].
  EXPECT_EQ(adaptive_shapes.at("out.3.weight"), (std::vector<int64_t>{5, 64, 1, 1}));
  EXPECT_TRUE(at::equal(adaptive->named_parameters()["out.3.weight"], at::zeros({5, 64, 1, 1})));
}

// CLIP's attention pool written out: the query is the mean position's, per head of d channels,
// softmax(q . k / sqrt(d)) over the HW + 1 positions, then c_proj.
TEST(EncoderUNet, AttentionPoolIsTheMeanPositionAttendingToAllPositions) {
  torch::manual_seed(1);
  const int64_t C = 64, heads = 2, d = C / heads, S = 4, out = 3;
  AttentionPool2d pool(S, C, heads, out);
  const at::Tensor x = at::randn({2, C, S, S});
  const at::Tensor got = pool->forward(x);

  auto params = pool->named_parameters();
  at::Tensor tokens = x.flatten(2);
  tokens = at::cat({tokens.mean(-1, true), tokens}, -1) + params["positional_embedding"];
  const at::Tensor qkv = at::conv1d(tokens, params["qkv_proj.weight"], params["qkv_proj.bias"]);
  const auto parts = qkv.chunk(3, 1);  // q, k, v, each [N, C, L]
  std::vector<at::Tensor> head_outputs;
  for (int64_t h = 0; h < heads; ++h) {
    const at::Tensor q = parts[0].narrow(1, h * d, d).select(2, 0);  // [N, d]
    const at::Tensor k = parts[1].narrow(1, h * d, d);               // [N, d, L]
    const at::Tensor v = parts[2].narrow(1, h * d, d);
    const at::Tensor w = at::softmax(at::einsum("nd,ndl->nl", {q, k}) / std::sqrt(double(d)), -1);
    head_outputs.push_back(at::einsum("nl,ndl->nd", {w, v}));
  }
  const at::Tensor attended = at::cat(head_outputs, 1).unsqueeze(-1);
  const at::Tensor expected =
      at::conv1d(attended, params["c_proj.weight"], params["c_proj.bias"]).squeeze(-1);
  EXPECT_TRUE(at::allclose(got, expected, 1e-5, 1e-6))
      << (got - expected).abs().max().item<double>();
}

TEST(EncoderUNet, LogitsOfASampleDoNotDependOnTheOthersInItsBatch) {
  torch::manual_seed(2);
  for (const Pool pool : {Pool::attention, Pool::adaptive}) {
    EncoderUNet net(tiny_classifier(), pool);
    torch::NoGradGuard no_grad;
    for (auto& p : net->parameters())  // the zero-initialised layers too: every path carries signal
      if (p.abs().max().item<double>() == 0) p.normal_(0.0, 0.05);
    const at::Tensor x = at::randn({4, 3, 16, 16});
    const at::Tensor t = at::tensor({10.0, 200.0, 500.0, 900.0});
    const at::Tensor all = net->forward(x, t);
    ASSERT_EQ(all.sizes(), (std::vector<int64_t>{4, 5}));
    const at::Tensor one = net->forward(x.narrow(0, 2, 1), t.narrow(0, 2, 1));
    EXPECT_TRUE(at::allclose(all.narrow(0, 2, 1), one, 1e-5, 1e-6)) << to_string(pool);
    // The timestep conditions the logits.
    const at::Tensor other_t = net->forward(x.narrow(0, 2, 1), at::tensor({10.0}));
    EXPECT_FALSE(at::allclose(one, other_t, 1e-4, 1e-5)) << to_string(pool);
  }
}

TEST(EncoderUNet, RefusesInputsOfAnotherSizeAndALabelConditionedConfig) {
  EncoderUNet net(tiny_classifier(), Pool::attention);
  EXPECT_THROW(net->forward(at::zeros({1, 3, 32, 32}), at::zeros({1})), std::invalid_argument);
  EXPECT_THROW(net->forward(at::zeros({1, 3, 16, 16}), at::zeros({2})), std::invalid_argument);
  UNetConfig conditional = tiny_classifier();
  conditional.num_classes = 10;
  EXPECT_THROW(EncoderUNet(conditional, Pool::attention), std::invalid_argument);
  EXPECT_EQ(parse_pool("adaptive"), Pool::adaptive);
  EXPECT_THROW(parse_pool("spatial"), std::invalid_argument);
}

}  // namespace
}  // namespace difftrain::model
