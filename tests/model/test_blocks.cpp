// The UNet's building blocks against direct restatements of improved-diffusion's formulas.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include <torch/torch.h>

#include "model/attention.hpp"
#include "model/res_block.hpp"
#include "model/resample.hpp"
#include "model_test_util.hpp"

namespace difftrain::model {
namespace {

at::Tensor param(torch::nn::Module& m, const std::string& name) {
  return m.named_parameters()[name];
}

// improved-diffusion's QKVAttention, written out: qkv [N, 3C, T] -> [N * H, 3d, T], split into
// q, k, v; w[b, t, s] = softmax_s(sum_c q[b, c, t] k[b, c, s] / sqrt(d)); out[b, c, t] =
// sum_s w[b, t, s] v[b, c, s]; back to [N, C, T].
at::Tensor naive_qkv_attention(const at::Tensor& qkv, int64_t heads) {
  const int64_t n = qkv.size(0), t = qkv.size(2), d = qkv.size(1) / (3 * heads);
  const auto per_head = qkv.reshape({n * heads, 3 * d, t});
  const auto q = per_head.narrow(1, 0, d), k = per_head.narrow(1, d, d),
             v = per_head.narrow(1, 2 * d, d);
  const auto w = torch::softmax(torch::einsum("bct,bcs->bts", {q, k}) / std::sqrt(double(d)), -1);
  return torch::einsum("bts,bcs->bct", {w, v}).reshape({n, heads * d, t});
}

TEST(Attention, SdpaEqualsNaiveSoftmaxAttention) {
  torch::manual_seed(0);
  for (const int64_t heads : {1, 2, 4}) {
    const auto qkv = torch::randn({3, 3 * 16, 37});
    const auto fused = qkv_attention(qkv, heads);
    ASSERT_EQ(fused.sizes(), (std::vector<int64_t>{3, 16, 37}));
    EXPECT_TRUE(torch::allclose(fused, naive_qkv_attention(qkv, heads), 1e-5, 1e-5))
        << "heads " << heads;
  }
}

TEST(Attention, HeadSplitOrderIsImprovedDiffusions) {
  // Head 1's values live in channels [3d + 2d, 3d + 3d) of qkv: with q = k = 0 the attention is
  // uniform, so output channels [d, 2d) are the mean over positions of exactly those channels.
  const int64_t d = 2, heads = 2, t = 5;
  auto qkv = torch::zeros({1, 3 * heads * d, t});
  qkv.narrow(1, 3 * d + 2 * d, d).copy_(torch::arange(d * t, torch::kFloat).reshape({1, d, t}));
  const auto out = qkv_attention(qkv, heads);
  const auto expected_head1 = torch::arange(d * t, torch::kFloat)
                                  .reshape({1, d, t})
                                  .mean({2}, /*keepdim=*/true)
                                  .expand({1, d, t});
  EXPECT_TRUE(torch::allclose(out.narrow(1, d, d), expected_head1));
  EXPECT_TRUE(torch::equal(out.narrow(1, 0, d), torch::zeros({1, d, t})));
}

// guided-diffusion's new order: q, k, v are the three C-channel thirds, each split into heads.
// Rearranging the channels into the legacy head-major order gives the legacy attention.
TEST(Attention, NewOrderSplitsQkvBeforeTheHeads) {
  torch::manual_seed(4);
  const int64_t heads = 4, d = 8, t = 10;
  const auto qkv = torch::randn({2, 3 * heads * d, t});
  // [3, H, d] -> [H, 3, d]: head h's q, k and v next to each other.
  const auto legacy = qkv.view({2, 3, heads, d, t}).transpose(1, 2).reshape({2, 3 * heads * d, t});
  EXPECT_TRUE(torch::allclose(qkv_attention(qkv, heads, /*new_order=*/true),
                              naive_qkv_attention(legacy, heads), 1e-5, 1e-5));
  EXPECT_FALSE(
      torch::allclose(qkv_attention(qkv, heads, true), qkv_attention(qkv, heads), 1e-3, 1e-3));
  EXPECT_TRUE(torch::allclose(qkv_attention(qkv, 1, true), qkv_attention(qkv, 1), 1e-6, 1e-6))
      << "one head: both orders are the same";
}

TEST(Attention, BlockEqualsResidualOverNaiveAttention) {
  torch::manual_seed(1);
  AttentionBlock block(64, 4);
  EXPECT_TRUE(torch::equal(param(*block, "proj_out.weight"), torch::zeros({64, 64, 1})));
  test::perturb_zero_init(*block);
  EXPECT_EQ(param(*block, "qkv.weight").sizes(), (std::vector<int64_t>{192, 64, 1}));
  const auto x = torch::randn({2, 64, 6, 6});
  const auto normed =
      torch::group_norm(x.flatten(2), 32, param(*block, "norm.weight"), param(*block, "norm.bias"));
  const auto qkv = torch::conv1d(normed, param(*block, "qkv.weight"), param(*block, "qkv.bias"));
  const auto h = torch::conv1d(naive_qkv_attention(qkv, 4), param(*block, "proj_out.weight"),
                               param(*block, "proj_out.bias"));
  EXPECT_TRUE(torch::allclose(block(x), x + h.view_as(x), 1e-5, 1e-5));
}

// A channels-last x runs the block over its [N, T, C] rows (qkv and proj_out as matmuls): the
// same values and gradients as channels-first, and every activation stays channels-last, so the
// residual sum does not mix layouts. In both head orders.
TEST(Attention, ChannelsLastBlockIsTheSameBlockInItsOwnLayout) {
  for (const bool new_order : {false, true}) {
    torch::manual_seed(3);
    AttentionBlock block(64, 4, new_order);
    test::perturb_zero_init(*block);
    const auto x = torch::randn({2, 64, 6, 5});
    const auto x_first = x.clone().requires_grad_(),
               x_last = x.contiguous(at::MemoryFormat::ChannelsLast).requires_grad_();
    const auto out_first = block(x_first), out_last = block(x_last);
    EXPECT_TRUE(out_first.is_contiguous());
    EXPECT_TRUE(out_last.is_contiguous(at::MemoryFormat::ChannelsLast)) << out_last.strides();
    EXPECT_TRUE(torch::allclose(out_last, out_first, 1e-5, 1e-5))
        << "max |diff| " << (out_last - out_first).abs().max().item<double>();
    const auto upstream = torch::randn_like(x);
    block->zero_grad();
    (out_first * upstream).sum().backward();
    std::vector<at::Tensor> grads_first;
    for (const auto& p : block->parameters())
      grads_first.push_back(p.grad().clone());
    block->zero_grad();
    (out_last * upstream).sum().backward();
    EXPECT_TRUE(torch::allclose(x_last.grad(), x_first.grad(), 1e-4, 1e-5));
    const auto params = block->parameters();
    for (std::size_t i = 0; i < params.size(); ++i)
      EXPECT_TRUE(torch::allclose(params[i].grad(), grads_first[i], 1e-4, 1e-5)) << i;
  }
}

// qkv_attention keeps a token-major qkv's layout ([N, T, 3C] in memory).
TEST(Attention, TokenMajorQkvGivesTokenMajorOutput) {
  torch::manual_seed(4);
  const auto qkv = torch::randn({2, 192, 30});
  const auto token_major = qkv.transpose(1, 2).contiguous().transpose(1, 2);
  ASSERT_TRUE(is_token_major(token_major));
  ASSERT_FALSE(is_token_major(qkv));
  for (const bool new_order : {false, true}) {
    const auto out = qkv_attention(token_major, 4, new_order);
    EXPECT_TRUE(is_token_major(out));
    EXPECT_TRUE(torch::allclose(out, qkv_attention(qkv, 4, new_order), 1e-5, 1e-6));
  }
}

TEST(ResBlock, ScaleShiftNormFormula) {
  torch::manual_seed(2);
  ResBlock block(ResBlockOptions{.channels = 32, .emb_channels = 16, .out_channels = 64});
  test::perturb_zero_init(*block);
  const auto x = torch::randn({2, 32, 8, 8}), emb = torch::randn({2, 16});
  const auto conv = [&](const at::Tensor& in, const std::string& name, int64_t padding) {
    return torch::conv2d(in, param(*block, name + ".weight"), param(*block, name + ".bias"), 1,
                         padding);
  };
  const auto norm = [&](const at::Tensor& in, const std::string& name) {
    return torch::group_norm(in, 32, param(*block, name + ".weight"),
                             param(*block, name + ".bias"));
  };
  auto h = conv(torch::silu(norm(x, "in_layers.0")), "in_layers.2", 1);
  const auto e = torch::linear(torch::silu(emb), param(*block, "emb_layers.1.weight"),
                               param(*block, "emb_layers.1.bias"))
                     .view({2, 128, 1, 1});
  const auto scale = e.narrow(1, 0, 64), shift = e.narrow(1, 64, 64);
  h = conv(torch::silu(norm(h, "out_layers.0") * (1 + scale) + shift), "out_layers.3", 1);
  const auto expected = conv(x, "skip_connection", 0) + h;
  EXPECT_TRUE(torch::allclose(block(x, emb), expected, 1e-5, 1e-5));
}

TEST(ResBlock, AdditiveEmbeddingAndIdentitySkip) {
  torch::manual_seed(3);
  ResBlock block(ResBlockOptions{
      .channels = 32, .emb_channels = 16, .out_channels = 32, .use_scale_shift_norm = false});
  EXPECT_FALSE(block->named_parameters().contains("skip_connection.weight"));
  EXPECT_EQ(param(*block, "emb_layers.1.weight").size(0), 32);
  // Zero-initialised out conv: the block starts as the identity.
  const auto x = torch::randn({2, 32, 4, 4}), emb = torch::randn({2, 16});
  EXPECT_TRUE(torch::equal(block(x, emb), x));
}

// guided-diffusion's up / down ResBlocks: in_layers' norm and SiLU, the resampling, then its conv;
// the skip path resampled alike; no parameters beyond a plain ResBlock's.
TEST(ResBlock, UpAndDownResampleInsideTheBlock) {
  for (const Resample r : {Resample::up, Resample::down}) {
    torch::manual_seed(5);
    ResBlock block(
        ResBlockOptions{.channels = 32, .emb_channels = 16, .out_channels = 32, .resample = r});
    ResBlock plain(ResBlockOptions{.channels = 32, .emb_channels = 16, .out_channels = 32});
    EXPECT_EQ(block->named_parameters().keys(), plain->named_parameters().keys());
    test::perturb_zero_init(*block);
    const auto x = torch::randn({2, 32, 8, 8}), emb = torch::randn({2, 16});
    const auto resample = [&](const at::Tensor& in) {
      return r == Resample::up ? torch::upsample_nearest2d(in, {16, 16})
                               : torch::avg_pool2d(in, {2, 2}, {2, 2});
    };
    const auto conv = [&](const at::Tensor& in, const std::string& name) {
      return torch::conv2d(in, param(*block, name + ".weight"), param(*block, name + ".bias"), 1,
                           1);
    };
    const auto norm = [&](const at::Tensor& in, const std::string& name) {
      return torch::group_norm(in, 32, param(*block, name + ".weight"),
                               param(*block, name + ".bias"));
    };
    auto h = conv(resample(torch::silu(norm(x, "in_layers.0"))), "in_layers.2");
    const auto e = torch::linear(torch::silu(emb), param(*block, "emb_layers.1.weight"),
                                 param(*block, "emb_layers.1.bias"))
                       .view({2, 64, 1, 1});
    h = conv(torch::silu(norm(h, "out_layers.0") * (1 + e.narrow(1, 0, 32)) + e.narrow(1, 32, 32)),
             "out_layers.3");
    const auto out = block(x, emb);
    EXPECT_EQ(out.size(2), r == Resample::up ? 16 : 4);
    EXPECT_TRUE(torch::allclose(out, resample(x) + h, 1e-5, 1e-5));
  }
}

TEST(Resample, ShapesAndNearestUpsampling) {
  const auto x = torch::arange(4, torch::kFloat).view({1, 1, 2, 2}).expand({1, 32, 2, 2});
  EXPECT_TRUE(torch::equal(Upsample(32, false)(x)[0][0], torch::tensor({{0.f, 0.f, 1.f, 1.f},
                                                                        {0.f, 0.f, 1.f, 1.f},
                                                                        {2.f, 2.f, 3.f, 3.f},
                                                                        {2.f, 2.f, 3.f, 3.f}})));
  EXPECT_EQ(Upsample(32, true)(x).sizes(), (std::vector<int64_t>{1, 32, 4, 4}));
  EXPECT_TRUE(torch::allclose(Downsample(32, false)(x), torch::full({1, 32, 1, 1}, 1.5)));
  EXPECT_EQ(Downsample(32, true)(torch::zeros({1, 32, 8, 8})).sizes(),
            (std::vector<int64_t>{1, 32, 4, 4}));
  EXPECT_TRUE(Downsample(32, false)->parameters().empty());
}

}  // namespace
}  // namespace difftrain::model
