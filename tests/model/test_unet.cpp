// The whole UNet: shapes, initial output, conditioning, memory formats, autocast, gradients.
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include <torch/torch.h>

#include "model/memory_format.hpp"
#include "model/unet.hpp"
#include "model_test_util.hpp"

namespace difftrain::model {
namespace {

using test::tiny_config;

// A tiny model with every zero-initialised layer perturbed, in eval mode.
UNet perturbed_model(const UNetConfig& config) {
  torch::manual_seed(0);
  UNet model(config);
  test::perturb_zero_init(*model);
  model->eval();
  return model;
}

TEST(UNet, OutputShapeAndZeroInitialOutput) {
  torch::manual_seed(0);
  UNet model(tiny_config());
  const auto x = torch::randn({3, 3, 16, 16});
  const auto out = model(x, torch::tensor({0, 500, 999}));
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{3, 6, 16, 16}));
  EXPECT_EQ(out.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(out, torch::zeros_like(out)));  // zero-initialised out conv

  // Other spatial sizes divisible by 2^(levels - 1) work too (non-square included).
  EXPECT_EQ(model(torch::randn({1, 3, 8, 12}), torch::tensor({1})).sizes(),
            (std::vector<int64_t>{1, 6, 8, 12}));
}

TEST(UNet, WithoutConvResampleOrScaleShiftNorm) {
  auto config = tiny_config();
  config.conv_resample = false;
  config.use_scale_shift_norm = false;
  config.num_head_channels = 32;
  config.channel_mult = {1, 2, 2};
  auto model = perturbed_model(config);
  const auto out = model(torch::randn({2, 3, 16, 16}), torch::tensor({3.5, 7.25}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 6, 16, 16}));
  EXPECT_TRUE(out.isfinite().all().item<bool>());
}

// guided-diffusion's options: up / down ResBlocks take the resampling layers' places (their
// state-dict names), gradients reach every parameter, and the new attention order, on the same
// weights, changes the output of a multi-head model.
TEST(UNet, GuidedDiffusionResblockUpdownAndNewAttentionOrder) {
  auto config = tiny_config();
  config.resblock_updown = true;
  config.use_new_attention_order = true;
  auto model = perturbed_model(config);
  const auto params = model->named_parameters();
  EXPECT_TRUE(params.contains("input_blocks.2.0.in_layers.2.weight")) << "the down ResBlock";
  EXPECT_FALSE(params.contains("input_blocks.2.0.op.weight"));
  EXPECT_TRUE(params.contains("output_blocks.1.2.in_layers.2.weight")) << "the up ResBlock";
  EXPECT_FALSE(params.contains("output_blocks.1.2.conv.weight"));

  model->train();
  torch::manual_seed(3);
  const auto x = torch::randn({2, 3, 16, 16});
  const auto t = torch::tensor({3, 400});
  const auto out = model(x, t);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 6, 16, 16}));
  (out * torch::randn_like(out)).sum().backward();
  for (const auto& p : params)
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << "dead parameter " << p.key();

  model->eval();
  auto legacy_config = config;
  legacy_config.use_new_attention_order = false;
  UNet legacy(legacy_config);
  legacy->eval();
  {
    torch::NoGradGuard no_grad;
    for (const auto& p : legacy->named_parameters())
      p.value().copy_(params[p.key()]);
  }
  EXPECT_GT((model(x, t) - legacy(x, t)).abs().max().item<double>(), 1e-4);
}

TEST(UNet, RunsInFloat64) {
  auto model = perturbed_model(tiny_config());
  const auto x = torch::randn({2, 3, 16, 16});
  const auto t = torch::tensor({1, 900});
  const auto reference = model(x, t);
  model->to(torch::kDouble);
  const auto out = model(x.to(torch::kDouble), t);
  EXPECT_EQ(out.scalar_type(), torch::kDouble);
  EXPECT_TRUE(torch::allclose(out.to(torch::kFloat), reference, 1e-4, 1e-5));
}

TEST(UNet, RejectsMalformedInputs) {
  UNet model(tiny_config());
  const auto t = torch::tensor({1, 2});
  EXPECT_THROW(model(torch::zeros({2, 1, 16, 16}), t), std::invalid_argument);
  EXPECT_THROW(model(torch::zeros({2, 3, 15, 16}), t), std::invalid_argument);
  EXPECT_THROW(model(torch::zeros({2, 3, 16, 16}), torch::tensor({1})), std::invalid_argument);
}

TEST(UNet, ClassConditioning) {
  auto config = tiny_config();
  config.num_classes = 3;
  auto model = perturbed_model(config);
  const auto x = torch::randn({2, 3, 16, 16});
  const auto t = torch::tensor({10, 10});
  const auto out0 = model(x, t, torch::tensor({0, 0}));
  const auto out1 = model(x, t, torch::tensor({1, 2}));
  EXPECT_GT((out0 - out1).abs().max().item<double>(), 1e-4);
  // Same label, same output: labels act per sample.
  EXPECT_TRUE(torch::allclose(model(x, t, torch::tensor({0, 2}))[0], out0[0], 1e-5, 1e-6));

  // A conditional model requires integer labels, one per sample.
  try {
    model(x, t);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "UNet is class-conditional (num_classes = 3) and needs integer class labels y "
                 "of shape [2], got none");
  }
  EXPECT_THROW(model(x, t, torch::tensor({0})), std::invalid_argument);
  EXPECT_THROW(model(x, t, torch::tensor({0.0, 1.0})), std::invalid_argument);

  // An unconditional model rejects labels.
  UNet unconditional(tiny_config());
  try {
    unconditional(x, t, torch::tensor({0, 1}));
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "UNet got class labels y, but the model is unconditional (num_classes = 0)");
  }
}

// Bilinear interpolation with corners not aligned (F.interpolate's "bilinear"), written out: output
// pixel i samples the input at (i + 0.5) * in / out - 0.5, clamped at 0, from its two neighbours.
at::Tensor bilinear_by_hand(const at::Tensor& image, int64_t out) {
  const int64_t n = image.size(0), c = image.size(1), in = image.size(2);
  at::Tensor r = at::zeros({n, c, out, out}, image.options());
  const auto source = [&](int64_t i, int64_t& lo, int64_t& hi, double& frac) {
    const double s = std::max(0.0, (i + 0.5) * static_cast<double>(in) / out - 0.5);
    lo = std::min(static_cast<int64_t>(s), in - 1);
    hi = std::min(lo + 1, in - 1);
    frac = s - lo;
  };
  for (int64_t y = 0; y < out; ++y)
    for (int64_t x = 0; x < out; ++x) {
      int64_t y0, y1, x0, x1;
      double fy, fx;
      source(y, y0, y1, fy);
      source(x, x0, x1, fx);
      const auto px = [&](int64_t yy, int64_t xx) { return image.select(2, yy).select(2, xx); };
      r.select(2, y).select(2, x).copy_((1 - fy) * ((1 - fx) * px(y0, x0) + fx * px(y0, x1)) +
                                        fy * ((1 - fx) * px(y1, x0) + fx * px(y1, x1)));
    }
  return r;
}

// guided-diffusion's SuperResModel: the UNet with twice the input channels, run on x and the
// low-resolution image bilinearly upsampled; the same weights in a plain UNet of 2C input channels
// give the same output on that concatenation.
TEST(UNet, AnUpsamplerIsThePlainUNetOnXAndTheUpsampledLowResImage) {
  auto config = tiny_config();
  config.low_res_size = 6;
  auto upsampler = perturbed_model(config);
  EXPECT_EQ(upsampler->named_parameters()["input_blocks.0.0.weight"].size(1), 6);

  auto plain_config = tiny_config();
  plain_config.in_channels = 6;
  UNet plain(plain_config);
  plain->eval();
  {
    torch::NoGradGuard no_grad;
    const auto from = upsampler->named_parameters();
    for (auto& p : plain->named_parameters()) {
      ASSERT_EQ(p.value().sizes(), from[p.key()].sizes()) << p.key();
      p.value().copy_(from[p.key()]);
    }
  }
  const auto x = torch::randn({2, 3, 16, 16}, torch::kDouble);
  const auto low_res = torch::rand({2, 3, 6, 6}, torch::kDouble) * 2 - 1;
  const auto t = torch::tensor({3, 700});
  upsampler->to(torch::kDouble);
  plain->to(torch::kDouble);
  torch::NoGradGuard no_grad;
  const auto out = upsampler->forward(x, t, at::Tensor(), low_res);
  const auto expected = plain(torch::cat({x, bilinear_by_hand(low_res, 16)}, 1), t);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 6, 16, 16}));
  EXPECT_LT((out - expected).abs().max().item<double>(), 1e-12);
  // The low-resolution image matters, per sample.
  const auto other = upsampler->forward(
      x, t, at::Tensor(), torch::cat({low_res.narrow(0, 0, 1), -low_res[1].unsqueeze(0)}));
  EXPECT_LT((other[0] - out[0]).abs().max().item<double>(), 1e-12);
  EXPECT_GT((other[1] - out[1]).abs().max().item<double>(), 1e-3);
}

// Noise conditioning augmentation: the level goes through an MLP of its own, the shape of
// time_embed, into the embedding every ResBlock sees. With that MLP's output layer at zero the
// model is the plain upsampler with the same weights; otherwise each sample's level changes that
// sample's output only.
TEST(UNet, ANoiseConditionedUpsamplerAddsItsLevelsEmbeddingToTheTimestepsEmbedding) {
  auto config = tiny_config();
  config.low_res_size = 8;
  config.low_res_noise = true;
  auto conditioned = perturbed_model(config);
  const auto params = conditioned->named_parameters();
  const int64_t ch = config.model_channels;
  EXPECT_EQ(params["low_res_noise_embed.0.weight"].sizes(), (std::vector<int64_t>{4 * ch, ch}));
  EXPECT_EQ(params["low_res_noise_embed.2.weight"].sizes(), (std::vector<int64_t>{4 * ch, 4 * ch}));

  config.low_res_noise = false;
  UNet plain(config);
  {
    torch::NoGradGuard no_grad;
    const auto from = conditioned->named_parameters();
    for (auto& p : plain->named_parameters())
      p.value().copy_(from[p.key()]);
    EXPECT_EQ(from.size(), plain->named_parameters().size() + 4) << "two Linear layers more";
  }
  conditioned->to(torch::kDouble);
  plain->to(torch::kDouble);
  const auto x = torch::randn({2, 3, 16, 16}, torch::kDouble);
  const auto low_res = torch::rand({2, 3, 8, 8}, torch::kDouble) * 2 - 1;
  const auto t = torch::tensor({3, 700});
  const auto level = torch::tensor({0.0, 250.0});
  torch::NoGradGuard no_grad;
  const auto out = conditioned->forward(x, t, at::Tensor(), low_res, level);
  const auto without_level = plain->forward(x, t, at::Tensor(), low_res);
  EXPECT_GT((out - without_level).abs().max().item<double>(), 1e-3);
  const auto other = conditioned->forward(x, t, at::Tensor(), low_res, torch::tensor({0.0, 900.0}));
  EXPECT_LT((other[0] - out[0]).abs().max().item<double>(), 1e-12);
  EXPECT_GT((other[1] - out[1]).abs().max().item<double>(), 1e-3);
  const auto& embed_out = conditioned->named_parameters()["low_res_noise_embed.2.weight"];
  conditioned->named_parameters()["low_res_noise_embed.2.bias"].zero_();
  embed_out.zero_();
  EXPECT_LT((conditioned->forward(x, t, at::Tensor(), low_res, level) - without_level)
                .abs()
                .max()
                .item<double>(),
            1e-12);

  try {
    conditioned->forward(x, t, at::Tensor(), low_res);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "UNet is conditioned on its low-resolution image's noise level (low_res_noise) "
                 "and needs one level per sample, shape [2], got none");
  }
  EXPECT_THROW(plain->forward(x, t, at::Tensor(), low_res, level), std::invalid_argument);
  config = tiny_config();
  config.low_res_noise = true;  // without low_res_size
  EXPECT_THROW(UNet{config}, std::invalid_argument);
}

TEST(UNet, AnUpsamplerNeedsItsLowResImageAndOthersRefuseOne) {
  auto config = tiny_config();
  config.low_res_size = 8;
  UNet upsampler(config);
  const auto x = torch::randn({2, 3, 16, 16});
  const auto t = torch::tensor({1, 2});
  try {
    upsampler(x, t);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "UNet is an upsampler (low_res_size = 8) and needs a low-resolution image of "
                 "shape [2, 3, h, w], got none");
  }
  EXPECT_THROW(upsampler->forward(x, t, at::Tensor(), torch::zeros({2, 6, 8, 8})),
               std::invalid_argument);
  EXPECT_THROW(upsampler->forward(x, t, at::Tensor(), torch::zeros({1, 3, 8, 8})),
               std::invalid_argument);

  UNet plain(tiny_config());
  try {
    plain->forward(x, t, at::Tensor(), torch::zeros({2, 3, 8, 8}));
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "UNet got a low-resolution image, but the model is not an upsampler "
                 "(low_res_size = 0)");
  }
  config.low_res_size = -1;
  EXPECT_THROW(UNet{config}, std::invalid_argument);
}

TEST(UNet, ChannelsLastEqualsContiguous) {
  auto model = perturbed_model(tiny_config());
  torch::manual_seed(1);
  const auto x = torch::randn({4, 3, 16, 16});
  const auto t = torch::tensor({0, 10, 100, 999});
  const auto reference = model(x, t);

  to_memory_format(*model, at::MemoryFormat::ChannelsLast);
  const auto conv_weight = model->named_parameters()["input_blocks.1.0.in_layers.2.weight"];
  ASSERT_TRUE(conv_weight.is_contiguous(at::MemoryFormat::ChannelsLast));
  const auto out = model(x.contiguous(at::MemoryFormat::ChannelsLast), t);
  EXPECT_TRUE(out.is_contiguous(at::MemoryFormat::ChannelsLast));  // NHWC all the way through
  EXPECT_TRUE(torch::allclose(out, reference, 1e-4, 1e-5))
      << "max |diff| " << (out - reference).abs().max().item<double>();

  // Channels-last weights alone put the convolutions in channels-last too.
  EXPECT_TRUE(torch::allclose(model(x, t), reference, 1e-4, 1e-5));

  // And back, through the module method (PyTorch's model.to(memory_format=...)).
  model->to(at::MemoryFormat::Contiguous);
  ASSERT_TRUE(conv_weight.is_contiguous());
  EXPECT_TRUE(torch::allclose(model(x, t), reference, 1e-5, 1e-6));
  model->to(at::kFloat);  // the usual Module::to overloads stay visible
}

TEST(UNet, Bf16AutocastIsCloseToFloat32) {
  auto model = perturbed_model(tiny_config());
  torch::manual_seed(2);
  const auto x = torch::randn({2, 3, 16, 16});
  const auto t = torch::tensor({5, 700});
  const auto reference = model(x, t);
  at::Tensor out;
  {
    test::CpuAutocast autocast(at::kBFloat16);
    out = model(x, t);
  }
  EXPECT_EQ(out.scalar_type(), torch::kFloat);  // cast back to x's dtype
  ASSERT_TRUE(out.isfinite().all().item<bool>());
  const double rel = ((out - reference).norm() / reference.norm()).item<double>();
  EXPECT_LT(rel, 0.05) << "relative error " << rel;

  // Backward through the autocast graph reaches the float32 weights.
  {
    test::CpuAutocast autocast(at::kBFloat16);
    model(x, t).square().mean().backward();
  }
  for (const auto& p : model->parameters())
    ASSERT_TRUE(p.grad().defined());
}

TEST(UNet, GradientReachesEveryParameter) {
  auto model = perturbed_model(tiny_config());
  model->train();
  torch::manual_seed(3);
  const auto out = model(torch::randn({2, 3, 16, 16}), torch::tensor({3, 400}));
  (out * torch::randn_like(out)).sum().backward();
  int64_t checked = 0;
  for (const auto& p : model->named_parameters()) {
    const auto& grad = p.value().grad();
    ASSERT_TRUE(grad.defined()) << p.key();
    EXPECT_GT(grad.abs().sum().item<double>(), 0.0) << "dead parameter " << p.key();
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int64_t>(model->parameters().size()));
}

TEST(UNet, DropoutActsOnlyInTraining) {
  auto config = tiny_config();
  config.dropout = 0.5;
  auto model = perturbed_model(config);
  const auto x = torch::randn({1, 3, 16, 16});
  const auto t = torch::tensor({50});
  EXPECT_TRUE(torch::equal(model(x, t), model(x, t)));
  model->train();
  EXPECT_FALSE(torch::equal(model(x, t), model(x, t)));
}

}  // namespace
}  // namespace difftrain::model
