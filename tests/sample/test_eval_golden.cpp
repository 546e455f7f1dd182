// eval's code path on the golden full-bound file: a stand-in network that returns the recorded
// outputs, called the way eval calls the UNet (original timesteps scaled as in training), the
// images evaluated in batches whose bound sums are added and summarised, as across ranks.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "data/h5_tensor.hpp"
#include "diffusion/bound.hpp"
#include "diffusion/bound_summary.hpp"
#include "diffusion/respace.hpp"
#include "diffusion/schedule.hpp"

namespace {

using namespace difftrain::diffusion;
namespace h5 = difftrain::h5;

const std::string kFile =
    std::string(DIFFTRAIN_GOLDEN_DIR) + "/bpd_linear_T50_epsilon_learned_range_zeros.h5";

// Golden README §6: |got - expected| <= 1e-4 + 1e-3 |expected| for float32 code.
void expect_close(double got, double want, const std::string& what) {
  EXPECT_LE(std::abs(got - want), 1e-4 + 1e-3 * std::abs(want))
      << what << ": got " << got << ", expected " << want;
}
void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  const at::Tensor g = got.to(at::kDouble).flatten(), w = want.to(at::kDouble).flatten();
  ASSERT_EQ(g.numel(), w.numel()) << what;
  for (int64_t i = 0; i < g.numel(); ++i)
    expect_close(g[i].item<double>(), w[i].item<double>(), what + "[" + std::to_string(i) + "]");
}

TEST(EvalGolden, BatchedBoundMatchesTheGoldenTerms) {
  const h5::File f = h5::File::open(kFile);
  ASSERT_EQ(f.attr_string("schedule"), "linear");
  ASSERT_EQ(f.attr_int("clip_denoised"), 1);
  const long T = f.attr_int("steps");
  const GaussianDiffusion d =
      make_gaussian_diffusion(parse_beta_schedule(f.attr_string("schedule")), T,
                              parse_model_mean_type(f.attr_string("model_mean_type")),
                              parse_model_var_type(f.attr_string("model_var_type")));
  const at::Tensor x_start = h5::read_tensor(f, "x_start", at::kFloat);
  const at::Tensor noise = h5::read_tensor(f, "noise", at::kFloat);
  const at::Tensor recorded = h5::read_tensor(f, "model_output", at::kFloat);
  const at::Tensor x_t = h5::read_tensor(f, "x_t", at::kDouble);
  const int64_t N = x_start.size(0);

  at::Tensor sums = empty_bound_sums(T, at::kCPU);
  for (int64_t i = 0; i < N; ++i) {
    // The recorded output stands in for the network at each timestep (train::Denoiser scales the
    // timesteps for the real one; its own test checks that).
    const ModelFn network = [&](const at::Tensor& x, const at::Tensor& timesteps) {
      const int64_t t = timesteps[0].item<int64_t>();
      // The x_t eval forms from the data and the noise is the recorded one.
      EXPECT_TRUE(at::allclose(x.to(at::kDouble), x_t[t].narrow(0, i, 1), 1e-5, 1e-5));
      return recorded[t].narrow(0, i, 1);
    };
    const BoundTerms b = calc_bpd_loop(d, network, x_start.narrow(0, i, 1), /*clip_denoised=*/true,
                                       [&](long t) { return noise[t].narrow(0, i, 1); });
    const std::string row = "image " + std::to_string(i) + " ";
    expect_close(b.vb, h5::read_tensor(f, "expected_vb", at::kDouble)[i], row + "vb");
    expect_close(b.mse, h5::read_tensor(f, "expected_mse", at::kDouble)[i], row + "mse");
    expect_close(b.xstart_mse, h5::read_tensor(f, "expected_xstart_mse", at::kDouble)[i],
                 row + "xstart_mse");
    sums += bound_sums(b);
  }

  const BoundSummary s = summarize_bound(sums, T);
  const at::Tensor vb = h5::read_tensor(f, "expected_vb", at::kDouble);
  const at::Tensor total = h5::read_tensor(f, "expected_total_bpd", at::kDouble);
  EXPECT_EQ(s.count, N);
  expect_close(s.total_bpd, total.mean().item<double>(), "total_bpd");
  expect_close(s.total_bpd_stderr, (total.std() / std::sqrt(N)).item<double>(), "stderr");
  expect_close(s.prior_bpd,
               h5::read_tensor(f, "expected_prior_bpd", at::kDouble).mean().item<double>(),
               "prior_bpd");
  expect_close(s.decoder_bpd, vb.select(1, 0).mean().item<double>(), "decoder_bpd");
  expect_close(s.terms_bpd, vb.slice(1, 1).sum(1).mean().item<double>(), "terms_bpd");
  expect_close(at::tensor(s.vb, at::kDouble), vb.mean(0), "per-t vb");
  expect_close(at::tensor(s.mse, at::kDouble),
               h5::read_tensor(f, "expected_mse", at::kDouble).mean(0), "per-t mse");
  expect_close(at::tensor(s.xstart_mse, at::kDouble),
               h5::read_tensor(f, "expected_xstart_mse", at::kDouble).mean(0), "per-t xstart_mse");
}

TEST(EvalGolden, SummaryOfOneImageHasNoStandardError) {
  BoundTerms b;
  b.total_bpd = at::tensor({3.0}, at::kDouble);
  b.prior_bpd = at::tensor({0.5}, at::kDouble);
  b.vb = at::tensor({1.0, 1.5}, at::kDouble).view({1, 2});
  b.xstart_mse = b.mse = at::zeros({1, 2}, at::kDouble);
  const BoundSummary s = summarize_bound(bound_sums(b), 2);
  EXPECT_DOUBLE_EQ(s.total_bpd, 3.0);
  EXPECT_TRUE(std::isnan(s.total_bpd_stderr));
  EXPECT_THROW(summarize_bound(empty_bound_sums(2, at::kCPU), 2), std::invalid_argument);
  EXPECT_THROW(summarize_bound(bound_sums(b), 3), std::invalid_argument);
}

}  // namespace
