// model.fused_group_norm on the CPU: fused_group_norm's forward and its hand-written backward
// against ATen's GroupNorm, scale-shift and SiLU under autograd (float64), in both layouts and
// dtypes, and a UNet with its GroupNorms fused against the same UNet without. The CUDA kernels
// are held to the same reference in tests/cuda (Cuda.FusedGroupNormKernelsMatchTheReference).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "model/fused_group_norm.hpp"
#include "model/group_norm32.hpp"
#include "model/group_norm_walk.hpp"
#include "model/memory_format.hpp"
#include "model/unet.hpp"
#include "model_test_util.hpp"

namespace difftrain::model {
namespace {

constexpr int64_t kGroups = 32;
constexpr double kEps = 1e-5;

struct Case {
  int64_t n, c, h, w;
  bool channels_last, silu, scale_shift;
};

std::string name(const Case& k) {
  return std::to_string(k.n) + "x" + std::to_string(k.c) + "x" + std::to_string(k.h) + "x" +
         std::to_string(k.w) + (k.channels_last ? " NHWC" : " NCHW") + (k.silu ? " silu" : "") +
         (k.scale_shift ? " scale-shift" : "");
}

// Inputs of one case; the leaves require gradients.
struct Inputs {
  at::Tensor x, weight, bias, scale, shift, probe;
};

Inputs inputs(const Case& k, at::ScalarType dtype) {
  torch::manual_seed(k.c * 131 + k.h);
  const auto opts = torch::TensorOptions(dtype);
  Inputs in;
  in.x = (torch::randn({k.n, k.c, k.h, k.w}, opts) * 3 + 0.5);
  if (k.channels_last) in.x = in.x.contiguous(at::MemoryFormat::ChannelsLast);
  in.x.requires_grad_(true);
  in.weight = (1 + 0.3 * torch::randn({k.c}, opts)).requires_grad_(true);
  in.bias = (0.2 * torch::randn({k.c}, opts)).requires_grad_(true);
  in.scale = (0.4 * torch::randn({k.n, k.c, 1, 1}, opts)).requires_grad_(true);
  in.shift = (0.4 * torch::randn({k.n, k.c, 1, 1}, opts)).requires_grad_(true);
  in.probe = torch::randn({k.n, k.c, k.h, k.w}, opts);  // the loss is sum(y * probe)
  return in;
}

// What GroupNorm32 and the layers after it compute without fusion.
at::Tensor reference(const Inputs& in, const Case& k) {
  auto y = at::group_norm(in.x, kGroups, in.weight, in.bias, kEps);
  if (k.scale_shift) y = y * (1 + in.scale) + in.shift;
  return k.silu ? at::silu(y) : y;
}

at::Tensor fused(const Inputs& in, const Case& k) {
  if (!k.scale_shift) return fused_group_norm(in.x, in.weight, in.bias, kGroups, kEps, k.silu);
  const auto s = 1 + in.scale.flatten(1);
  return fused_group_norm(in.x, in.weight * s, in.bias * s + in.shift.flatten(1), kGroups, kEps,
                          k.silu);
}

// y and the gradients of sum(y * probe) with respect to x, weight, bias, scale and shift.
std::vector<at::Tensor> outputs(const Inputs& in, const at::Tensor& y) {
  const auto grads =
      torch::autograd::grad({(y * in.probe).sum()}, {in.x, in.weight, in.bias, in.scale, in.shift},
                            /*grad_outputs=*/{}, /*retain_graph=*/false,
                            /*create_graph=*/false, /*allow_unused=*/true);
  std::vector<at::Tensor> out{y.detach()};
  for (const auto& g : grads)
    out.push_back(g.defined() ? g : at::zeros({}, y.options()));
  return out;
}

const std::vector<Case> kCases = {
    {3, 64, 5, 7, false, true, true},   // 2 channels a group, odd sizes
    {3, 64, 5, 7, true, true, true},    // the same, channels-last
    {2, 96, 4, 4, true, false, false},  // 3 channels a group: attention's plain norm
    {2, 32, 6, 6, false, true, false},  // 1 channel a group
    {2, 256, 1, 1, true, true, true},   // one position (the lowest level of a deep UNet)
};

TEST(FusedGroupNorm, ForwardAndBackwardMatchGroupNormScaleShiftAndSiluInFloat64) {
  const std::vector<std::string> what{"y", "dx", "dweight", "dbias", "dscale", "dshift"};
  for (const Case& k : kCases) {
    const Inputs in = inputs(k, at::kDouble);
    const auto expected = outputs(in, reference(in, k));
    const auto got_y = fused(in, k);
    EXPECT_EQ(got_y.is_contiguous(at::MemoryFormat::ChannelsLast) && !got_y.is_contiguous(),
              k.channels_last && k.h * k.w > 1)
        << name(k) << ": the output keeps the input's layout";
    const auto got = outputs(in, got_y);
    for (size_t i = 0; i < got.size(); ++i) {
      const double scale = std::max(1.0, expected[i].abs().max().item<double>());
      const double err = (got[i] - expected[i]).abs().max().item<double>();
      EXPECT_LT(err, 1e-11 * scale) << name(k) << ": " << what[i] << " off by " << err;
    }
  }
}

// A mutation check of the test above: a backward that forgets the mean's share of dx fails it.
TEST(FusedGroupNorm, TheReferenceGradientIsNotTheNaiveOne) {
  const Case k = kCases[0];
  const Inputs in = inputs(k, at::kDouble);
  const auto dx = outputs(in, reference(in, k))[1];
  // d/dx of sum(probe * f(x_hat a + b)) holding the statistics fixed: rstd a dz.
  at::Tensor naive;
  {
    const auto x = in.x.detach().requires_grad_(true);
    const auto xg = x.view({k.n, kGroups, -1});
    const auto mean = xg.mean({2}, true).detach(), var = xg.var({2}, false, true).detach();
    auto y =
        ((xg - mean) / (var + kEps).sqrt()).view_as(x) * in.weight.detach().view({1, -1, 1, 1});
    y = y + in.bias.detach().view({1, -1, 1, 1});
    y = at::silu(y * (1 + in.scale.detach()) + in.shift.detach());
    naive = torch::autograd::grad({(y * in.probe).sum()}, {x})[0];
  }
  EXPECT_GT((naive - dx).abs().max().item<double>(), 1e-3 * dx.abs().max().item<double>());
}

TEST(FusedGroupNorm, Bf16ActivationsAreNormalisedInFloat32AndRoundedOnce) {
  for (const Case& k : kCases) {
    const Inputs in = inputs(k, at::kFloat);
    const auto expected = reference(in, k).detach();
    Inputs bf = in;
    bf.x = in.x.detach().to(at::kBFloat16).requires_grad_(true);
    const auto y = fused(bf, k);
    EXPECT_EQ(y.scalar_type(), at::kBFloat16) << name(k);
    // The input's own rounding (2^-8 of |x|, normalised) plus the output's.
    const double err = (y.to(at::kFloat) - expected).abs().max().item<double>();
    EXPECT_LT(err, 0.05 * std::max(1.0, expected.abs().max().item<double>())) << name(k);
    (y.to(at::kFloat) * in.probe).sum().backward();
    EXPECT_EQ(bf.x.grad().scalar_type(), at::kBFloat16) << name(k);
    EXPECT_EQ(in.weight.grad().scalar_type(), at::kFloat) << name(k);
    EXPECT_TRUE(in.weight.grad().isfinite().all().item<bool>()) << name(k);
  }
}

// The CUDA kernels' thread mapping (model/group_norm_walk.hpp), on the CPU: the threads of a
// group's block visit each of its elements once, at the element's offset in either layout;
// walker() names the thread of each (channel, row); locate() gives each element's (n, c), (n, g).
TEST(FusedGroupNorm, KernelThreadsWalkEachGroupOnce) {
  using kernels::Layout;
  const std::vector<std::pair<int64_t, int64_t>> channels_positions{
      {64, 35}, {96, 16}, {32, 1}, {128, 1024}, {8192, 4}};
  for (const Layout layout : {Layout::nchw, Layout::nhwc}) {
    for (const auto& [c, hw] : channels_positions) {
      const kernels::GroupNormShape s{2, c, hw, kGroups, layout};
      const int64_t cg = c / kGroups;
      SCOPED_TRACE(std::to_string(c) + " channels, " + std::to_string(hw) + " positions, " +
                   (layout == Layout::nhwc ? "NHWC" : "NCHW"));
      const auto offset = [&](int64_t n, int64_t ch, int64_t p) {
        return layout == Layout::nhwc ? (n * hw + p) * c + ch : (n * c + ch) * hw + p;
      };
      int64_t wrong = 0;
      for (int64_t n = 0; n < s.n; ++n) {
        for (int64_t g = 0; g < kGroups; ++g) {
          std::vector<int> visits(cg * hw, 0);
          for (int t = 0; t < kernels::kGroupThreads; ++t) {
            const kernels::GroupWalk w = kernels::group_walk(s, n, g, t);
            if (w.channel < 0) continue;
            wrong += kernels::walker(s, w.channel, w.row) != t;
            for (int64_t p = w.row; p < hw; p += w.rows) {
              wrong += w.first + p * w.p_stride != offset(n, g * cg + w.channel, p);
              ++visits[w.channel * hw + p];
            }
          }
          wrong += std::count_if(visits.begin(), visits.end(), [](int v) { return v != 1; });
        }
        for (int64_t ch = 0; ch < c; ++ch) {
          for (int64_t p = 0; p < hw; ++p) {
            int64_t nc = 0, ng = 0;
            kernels::locate<int64_t>(offset(n, ch, p), s, nc, ng);
            wrong += nc != n * c + ch || ng != n * kGroups + ch / cg;
          }
        }
      }
      EXPECT_EQ(wrong, 0);
    }
  }
}

TEST(FusedGroupNorm, RejectsChannelsThatDoNotSplitIntoTheGroups) {
  const auto x = torch::randn({2, 48, 4, 4});
  EXPECT_THROW(fused_group_norm(x, torch::ones({48}), torch::zeros({48}), 32, kEps, true),
               std::invalid_argument);
}

TEST(FusedGroupNorm, OnTheCpuItRunsFromAtenOps) {
  EXPECT_FALSE(fused_group_norm_uses_kernels(torch::randn({2, 64, 4, 4}), kGroups));
}

// The UNet with model.fused_group_norm against the same weights without, in both layouts: the
// output and every parameter's gradient.
TEST(FusedGroupNorm, AUNetWithFusedNormsMatchesTheDefault) {
  for (const bool channels_last : {false, true}) {
    torch::manual_seed(0);
    UNet model(test::tiny_config());
    test::perturb_zero_init(*model);
    if (channels_last) to_memory_format(*model, at::MemoryFormat::ChannelsLast);
    torch::manual_seed(1);
    auto x = torch::randn({3, 3, 16, 16});
    if (channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const auto t = torch::tensor({3, 400, 999});
    const auto probe = torch::randn({3, 6, 16, 16});

    const auto run = [&](bool on) {
      use_fused_group_norm(*model, on);
      model->zero_grad();
      const auto out = model(x, t);
      (out * probe).sum().backward();
      std::vector<at::Tensor> r{out.detach()};
      for (const auto& p : model->parameters())
        r.push_back(p.grad().clone());
      return r;
    };
    const auto expected = run(false), got = run(true);
    const auto names = model->named_parameters().keys();
    double largest_grad = 0;  // the floor for the biases whose gradient is zero but for rounding
    for (size_t i = 1; i < expected.size(); ++i)
      largest_grad = std::max(largest_grad, expected[i].abs().max().item<double>());
    for (size_t i = 0; i < got.size(); ++i) {
      const double scale = expected[i].abs().max().item<double>();
      const double err = (got[i] - expected[i]).abs().max().item<double>();
      EXPECT_LE(err, 1e-4 * scale + 1e-6 * largest_grad)
          << (channels_last ? "NHWC " : "NCHW ") << (i == 0 ? "output" : names[i - 1]);
    }
  }
}

}  // namespace
}  // namespace difftrain::model
