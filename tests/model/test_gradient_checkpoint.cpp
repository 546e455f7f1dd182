// Gradient checkpointing (model.use_checkpoint): the same gradients as without it (bit for bit for
// a block; to rounding for the UNet), also with dropout, under bf16 autocast and in channels-last,
// for far fewer activations kept between forward and backward; without grad, no recomputation.
#include <gtest/gtest.h>

#include <malloc.h>

#include <functional>
#include <string>

#include <torch/torch.h>

#include "common/autocast_scope.hpp"
#include "model/gradient_checkpoint.hpp"
#include "model/memory_format.hpp"
#include "model/unet.hpp"
#include "model_test_util.hpp"

namespace difftrain::model {
namespace {

// Copies `from`'s parameters into `to` (modules of the same config).
void copy_parameters(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  const auto source = from.named_parameters();
  for (auto& p : to.named_parameters())
    p.value().copy_(source[p.key()]);
}

// Two UNets with the same weights (zero-initialised layers perturbed), in training mode: the
// config's, and the same with use_checkpoint.
std::pair<UNet, UNet> plain_and_checkpointed(UNetConfig config) {
  config.use_checkpoint = false;
  torch::manual_seed(0);
  UNet plain(config);
  test::perturb_zero_init(*plain);
  config.use_checkpoint = true;
  UNet checkpointed(config);
  copy_parameters(*plain, *checkpointed);
  plain->train();
  checkpointed->train();
  return {plain, checkpointed};
}

// The gradients of a random projection of f's output with respect to `inputs` and `params`, with
// the default generator seeded 7 before the forward (dropout), and its next draw after backward.
struct Gradients {
  at::Tensor output;
  std::vector<at::Tensor> grads;  // inputs, then params
  at::Tensor next_random;
};

Gradients gradients(const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f,
                    const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& params,
                    at::ScalarType autocast = at::kFloat) {
  std::vector<at::Tensor> leaves;
  for (const auto& x : inputs)
    leaves.push_back(x.detach().requires_grad_(true));
  for (const auto& p : params)
    p.mutable_grad() = at::Tensor();
  torch::manual_seed(7);
  at::Tensor out;
  {
    AutocastScope scope(at::kCPU, autocast != at::kFloat, autocast);
    out = f(leaves);
    const auto projection = torch::randn(out.sizes(), at::detail::createCPUGenerator(3));
    (out.to(at::kFloat) * projection).sum().backward();
  }
  Gradients g{out.detach(), {}, torch::rand({1})};
  for (const auto& x : leaves)
    g.grads.push_back(x.grad());
  for (const auto& p : params)
    g.grads.push_back(p.grad().clone());
  return g;
}

// The largest difference of a gradient over its tolerance, rtol of its own largest magnitude plus
// `floor` of the largest of all (the biases of convolutions that feed a GroupNorm have a zero
// gradient in exact arithmetic, and only rounding noise in floating point): below 1 passes.
double worst_over_tolerance(const Gradients& a, const Gradients& b, double rtol, double floor) {
  double largest = 0;
  for (const auto& g : a.grads)
    largest = std::max(largest, g.abs().max().item<double>());
  double worst = 0;
  for (std::size_t i = 0; i < a.grads.size(); ++i) {
    const double tolerance = rtol * a.grads[i].abs().max().item<double>() + floor * largest;
    worst = std::max(worst, (a.grads[i] - b.grads[i]).abs().max().item<double>() / tolerance);
  }
  return worst;
}

// A ResBlock (dropout 0.3) then an attention block, recomputed in the same order on the same
// kernels: the same gradients bit for bit, in fp32 and under bf16 autocast (backward itself runs
// outside it), contiguous and channels-last. The dropout mask is replayed, and backward leaves the
// generator where it found it.
TEST(GradientCheckpoint, ABlockGivesTheSameGradientsBitForBit) {
  const auto blocks = [](bool use_checkpoint) {
    torch::manual_seed(0);
    ResBlock res(ResBlockOptions{.channels = 32,
                                 .emb_channels = 64,
                                 .out_channels = 64,
                                 .dropout = 0.3,
                                 .use_checkpoint = use_checkpoint});
    AttentionBlock attention(64, 2, false, use_checkpoint);
    test::perturb_zero_init(*res);
    test::perturb_zero_init(*attention);
    return std::make_pair(res, attention);
  };
  auto [res, attention] = blocks(false);
  auto [res_c, attention_c] = blocks(true);
  copy_parameters(*res, *res_c);
  copy_parameters(*attention, *attention_c);
  const auto x = torch::randn({4, 32, 8, 8}), emb = torch::randn({4, 64});
  for (const auto format : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast})
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      SCOPED_TRACE(::testing::Message() << format << " " << dtype);
      for (auto* m : std::vector<torch::nn::Module*>{res.get(), attention.get(), res_c.get(),
                                                     attention_c.get()})
        to_memory_format(*m, format);
      const auto run = [&](ResBlock& r, AttentionBlock& a) {
        std::vector<at::Tensor> params = r->parameters();
        for (const auto& p : a->parameters())
          params.push_back(p);
        return gradients([&](const std::vector<at::Tensor>& in) { return a(r(in[0], in[1])); },
                         {x.contiguous(format), emb}, params, dtype);
      };
      const Gradients a = run(res, attention), b = run(res_c, attention_c);
      EXPECT_TRUE(at::equal(a.output, b.output));
      for (std::size_t i = 0; i < a.grads.size(); ++i)
        EXPECT_TRUE(at::equal(a.grads[i], b.grads[i]))
            << "gradient " << i << ": max |diff| "
            << (a.grads[i] - b.grads[i]).abs().max().item<double>();
      EXPECT_TRUE(at::equal(a.next_random, b.next_random));
    }
}

// The whole UNet with dropout: the gradients of x and of every parameter to rounding. (Not bit for
// bit: a tensor that feeds a block twice and a skip connection gets its gradient summed in another
// order when the block's two uses are summed inside the recomputation.) A fresh dropout mask in
// the recomputation would be off by about 1.
TEST(GradientCheckpoint, TheUNetGivesTheSameGradientsToRounding) {
  auto config = test::tiny_config();
  config.dropout = 0.3;
  config.num_classes = 4;
  auto [plain, checkpointed] = plain_and_checkpointed(config);
  const auto x = torch::randn({3, 3, 16, 16});
  const auto t = torch::tensor({1, 300, 999});
  const auto y = torch::tensor({0, 3, 1});
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(dtype);
    const auto run = [&](UNet& m) {
      return gradients([&](const std::vector<at::Tensor>& in) { return m(in[0], t, y); }, {x},
                       m->parameters(), dtype);
    };
    const Gradients a = run(plain), b = run(checkpointed);
    EXPECT_TRUE(at::equal(a.output, b.output));
    // fp32: 1e-5 and 1e-6 (measured: 1e-6 and 1.3e-7); bf16: 2e-2 and one bf16 rounding of the
    // largest gradient, 2^-8 (measured: 1.4e-2 and 1.4e-3).
    const bool fp32 = dtype == at::kFloat;
    const double worst = worst_over_tolerance(a, b, fp32 ? 1e-5 : 2e-2, fp32 ? 1e-6 : 1.0 / 256);
    std::cout << dtype << ": largest gradient difference " << worst << " of its tolerance\n";
    EXPECT_LT(worst, 1.0);
    EXPECT_TRUE(at::equal(a.next_random, b.next_random));
    // The label embedding, outside every block, gets its gradient through them.
    EXPECT_GT(
        checkpointed->named_parameters()["label_emb.weight"].grad().abs().sum().item<double>(),
        0.0);
  }
}

// The bytes the heap holds: what malloc handed out, small and mmapped.
double heap_bytes() {
  const struct mallinfo2 m = mallinfo2();
  return static_cast<double>(m.uordblks + m.hblkhd);
}

// What forward leaves allocated for backward: checkpointed, only the blocks' inputs and outputs.
TEST(GradientCheckpoint, KeepsAFractionOfTheActivationsForBackward) {
  auto config = test::tiny_config();
  config.num_res_blocks = 2;
  auto [plain, checkpointed] = plain_and_checkpointed(config);
  const auto x = torch::randn({16, 3, 16, 16});
  const auto t = torch::randint(0, 1000, {16});
  const auto kept = [&](UNet& m) {
    const double before = heap_bytes();
    at::Tensor out = m(x, t);
    const double after = heap_bytes() - before;
    out.sum().backward();
    return after;
  };
  kept(plain);  // warm-up: the allocator's first caches
  const double plain_bytes = kept(plain), checkpointed_bytes = kept(checkpointed);
  std::cout << "kept for backward: " << plain_bytes / (1 << 20) << " MiB without checkpointing, "
            << checkpointed_bytes / (1 << 20) << " MiB with\n";
  EXPECT_GT(plain_bytes, 4.0 * (1 << 20));
  EXPECT_LT(checkpointed_bytes, 0.4 * plain_bytes);
}

// Without a gradient to record (sampling, evaluation), a checkpointed block is the block.
TEST(GradientCheckpoint, IsThePlainBlockWithoutGrad) {
  const auto w = torch::randn({4}, torch::requires_grad());
  int calls = 0;
  const CheckpointedBlock block = [&](const std::vector<at::Tensor>& in) {
    ++calls;
    return in[0] * w;
  };
  const auto x = torch::randn({4});
  {
    torch::NoGradGuard no_grad;
    const auto y = gradient_checkpoint(block, {x}, {w});
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(at::equal(y, x * w.detach()));
  }
  EXPECT_EQ(calls, 1);
  // With grad: forward once, backward once more, and the gradients of a product.
  const auto xg = x.clone().requires_grad_(true);
  const auto y = gradient_checkpoint(block, {xg}, {w});
  EXPECT_EQ(calls, 2);
  EXPECT_NE(y.grad_fn(), nullptr);
  y.sum().backward();
  EXPECT_EQ(calls, 3);
  EXPECT_TRUE(at::allclose(xg.grad(), w.detach()));
  EXPECT_TRUE(at::allclose(w.grad(), x));
}

}  // namespace
}  // namespace difftrain::model
