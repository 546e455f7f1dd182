// The pieces of a training step on their own: microbatch averaging, the step's noise, each loss
// falling on a fixed batch, EMA, the fp16 loss scaler.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <tuple>
#include <vector>

#include "data/loader.hpp"
#include "data/test_files.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "diffusion/respace.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "model/unet.hpp"
#include "parallel/communicator.hpp"
#include "train/config.hpp"
#include "train/denoiser.hpp"
#include "train/ema.hpp"
#include "train/loss_scaler.hpp"
#include "train/metrics.hpp"
#include "train/setup.hpp"
#include "train/step_rng.hpp"
#include "train/train_step.hpp"
#include "trainer_fixture.hpp"

namespace tr = difftrain::train;
using difftrain::testing::TempDir;
using difftrain::testing::tiny_config;

namespace {

TEST(TrainingStep, MicrobatchesAverageToTheFullBatchGradient) {
  TempDir dir;
  const auto c = tr::parse_config(tiny_config("unused", dir / "run"));
  torch::manual_seed(0);
  difftrain::model::UNet net(tr::unet_config(c, {16, 1, 0}));
  // Non-zero output layers, so that every parameter gets a gradient.
  {
    torch::NoGradGuard no_grad;
    for (auto& p : net->parameters())
      p.add_(at::randn_like(p) * 0.01);
  }
  const auto d = tr::make_diffusion(c);
  const tr::StepInputs in{at::rand({8, 1, 16, 16}) * 2 - 1,
                          at::arange(8, at::kLong) * 6,
                          at::rand({8}) + 0.5,
                          at::randn({8, 1, 16, 16}),
                          {}};
  auto comm = difftrain::parallel::make_local_communicator();
  std::vector<std::vector<at::Tensor>> grads;
  for (int64_t micro : {0, 2, 4}) {
    for (auto& p : net->parameters())
      p.mutable_grad() = at::Tensor();
    tr::TrainingConfig training = c.training;
    training.microbatch = micro;
    const tr::StepContext context{tr::make_denoiser(net, c), d, tr::make_loss_spec(c), training,
                                  *comm};
    tr::forward_backward(context, in);
    grads.emplace_back();
    for (auto& p : net->parameters())
      grads.back().push_back(p.grad().clone());
  }
  for (std::size_t i = 0; i < grads[0].size(); ++i) {
    EXPECT_GT(grads[0][i].abs().max().item<float>(), 0.0f) << "parameter " << i;
    EXPECT_TRUE(at::allclose(grads[1][i], grads[0][i], 1e-4, 1e-7)) << "parameter " << i;
    EXPECT_TRUE(at::allclose(grads[2][i], grads[0][i], 1e-4, 1e-7)) << "parameter " << i;
  }
}

// Row i of a step's noise comes from its own generator: a rank drawing rows [3, 6) gets what
// those rows hold in the whole batch, so the split of the batch over ranks does not matter.
TEST(TrainingStep, StepNoiseRowsDoNotDependOnTheSplit) {
  const at::Tensor whole = tr::step_noise(7, 5, 0, 8, {1, 4, 4});
  EXPECT_TRUE(at::equal(tr::step_noise(7, 5, 3, 3, {1, 4, 4}), whole.narrow(0, 3, 3)));
  EXPECT_FALSE(at::equal(tr::step_noise(7, 6, 0, 8, {1, 4, 4}), whole));  // another step
  EXPECT_NEAR(tr::step_noise(1, 0, 0, 64, {3, 16, 16}).std().item<double>(), 1.0, 0.02);
}

// Classifier-free guidance's label dropout: about p_uncond of the rows get the null label, the
// others keep theirs; a rank's rows are the same rows of the whole global batch; another step
// drops others; p_uncond 0 leaves the labels alone.
TEST(TrainingStep, LabelDropoutIsDrawnOverTheGlobalBatch) {
  const int64_t B = 4000;
  const auto sampler = difftrain::diffusion::make_timestep_sampler(
      difftrain::diffusion::TimestepSamplerKind::uniform, 50, at::kCPU);
  const auto batch = [](int64_t first, int64_t rows) {
    difftrain::data::Batch b;
    b.images = at::zeros({rows, 1, 2, 2});
    b.labels = (at::arange(first, first + rows, at::kLong) * 7).remainder(10);
    b.row_offset = first;
    return b;
  };
  const tr::LabelDropout dropout{0.3, 10};
  const at::Tensor whole = tr::draw_step_inputs(7, 5, sampler, batch(0, B), B, dropout).labels;
  const at::Tensor original = batch(0, B).labels;
  const at::Tensor dropped = whole.eq(10);
  EXPECT_NEAR(dropped.to(at::kDouble).mean().item<double>(), 0.3, 0.03);  // 4 standard errors
  EXPECT_TRUE(at::equal(whole.masked_select(dropped.logical_not()),
                        original.masked_select(dropped.logical_not())));
  const at::Tensor rank_rows =
      tr::draw_step_inputs(7, 5, sampler, batch(1000, 1000), B, dropout).labels;
  EXPECT_TRUE(at::equal(rank_rows, whole.narrow(0, 1000, 1000)));
  EXPECT_FALSE(
      at::equal(tr::draw_step_inputs(7, 6, sampler, batch(0, B), B, dropout).labels, whole));
  EXPECT_TRUE(at::equal(tr::draw_step_inputs(7, 5, sampler, batch(0, B), B).labels, original));
}

// Noise conditioning augmentation's draws: each row's level uniform over 0 .. max_level and its
// noise standard normal, from the row's own generator (a rank's rows are those rows of the whole
// batch); another step draws others; models without it draw nothing.
TEST(TrainingStep, LowResNoiseLevelsAreDrawnPerRowOverTheirRange) {
  const int64_t B = 4000;
  const auto sampler = difftrain::diffusion::make_timestep_sampler(
      difftrain::diffusion::TimestepSamplerKind::uniform, 50, at::kCPU);
  const auto batch = [](int64_t first, int64_t rows) {
    difftrain::data::Batch b;
    b.images = at::zeros({rows, 1, 8, 8});
    b.row_offset = first;
    return b;
  };
  const tr::LowResNoise draws{.max_level = 99, .size = 4};
  const tr::StepInputs whole = tr::draw_step_inputs(7, 5, sampler, batch(0, B), B, {}, draws);
  ASSERT_EQ(whole.low_res_noise.sizes(), (std::vector<int64_t>{B, 1, 4, 4}));
  EXPECT_EQ(whole.low_res_t.min().item<int64_t>(), 0);
  EXPECT_EQ(whole.low_res_t.max().item<int64_t>(), 99);
  // Uniform over 100 levels: mean 49.5, standard error 28.9 / sqrt(4000) = 0.46.
  EXPECT_NEAR(whole.low_res_t.to(at::kDouble).mean().item<double>(), 49.5, 2.0);
  EXPECT_NEAR(whole.low_res_noise.std().item<double>(), 1.0, 0.01);
  const tr::StepInputs rows = tr::draw_step_inputs(7, 5, sampler, batch(1000, 1000), B, {}, draws);
  EXPECT_TRUE(at::equal(rows.low_res_t, whole.low_res_t.narrow(0, 1000, 1000)));
  EXPECT_TRUE(at::equal(rows.low_res_noise, whole.low_res_noise.narrow(0, 1000, 1000)));
  EXPECT_FALSE(at::equal(tr::draw_step_inputs(7, 6, sampler, batch(0, B), B, {}, draws).low_res_t,
                         whole.low_res_t));
  EXPECT_TRUE(at::equal(whole.noise, tr::draw_step_inputs(7, 5, sampler, batch(0, B), B).noise))
      << "the diffusion's own noise is unchanged";
  EXPECT_FALSE(tr::draw_step_inputs(7, 5, sampler, batch(0, B), B).low_res_t.defined());
  EXPECT_EQ(tr::low_res_noise_level(1.0, 1000), 999);
  EXPECT_EQ(tr::low_res_noise_level(0.25, 1001), 250);
}

// On a fixed batch with fixed t and noise, each objective falls by a clear margin.
void expect_loss_drops(const std::string& loss, const std::string& var_type) {
  TempDir dir;
  auto c = tr::parse_config(tiny_config("unused", dir / "run"),
                            {"diffusion.loss=" + loss, "diffusion.model_var_type=" + var_type});
  tr::validate(c);
  torch::manual_seed(0);
  difftrain::model::UNet net(tr::unet_config(c, {16, 1, 0}));
  const auto d = tr::make_diffusion(c);
  const auto spec = tr::make_loss_spec(c);
  const at::Tensor x0 = (at::rand({8, 1, 16, 16}) > 0.5).to(at::kFloat) * 2 - 1;
  const at::Tensor t = at::arange(8, at::kLong) * 6;
  const at::Tensor noise = at::randn({8, 1, 16, 16});
  const at::Tensor x_t = difftrain::diffusion::q_sample(d, x0, t, noise);
  torch::optim::AdamW opt(net->parameters(), torch::optim::AdamWOptions(2e-3).weight_decay(0));
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    opt.zero_grad();
    const auto out = tr::make_denoiser(net, c)(x_t, t);
    const at::Tensor l =
        difftrain::diffusion::training_terms(d, spec, out, x0, x_t, t, noise).loss.mean();
    l.backward();
    opt.step();
    (step == 0 ? first : last) = l.item<double>();
  }
  EXPECT_LT(last, 0.6 * first) << loss << ": " << first << " -> " << last;
}

TEST(TrainingStep, HybridLossDrops) {
  expect_loss_drops("hybrid", "learned_range");
}
TEST(TrainingStep, SimpleLossDrops) {
  expect_loss_drops("simple", "fixed_large");
}
TEST(TrainingStep, VlbLossDrops) {
  expect_loss_drops("vlb", "learned_range");
}

TEST(Ema, FollowsTheFormulaWithWarmup) {
  at::Tensor p = at::zeros({3});
  auto emas = tr::make_emas({0.9999, 0.5}, {p});
  double e0 = 0, e1 = 0;
  for (int n = 0; n < 5; ++n) {
    p.fill_(n + 1.0);
    tr::update_emas(emas, {p}, n, /*warmup=*/true, at::zeros({}));
    const double r0 = std::min(0.9999, (1.0 + n) / (10.0 + n)),
                 r1 = std::min(0.5, (1.0 + n) / (10.0 + n));
    e0 = r0 * e0 + (1 - r0) * (n + 1.0);
    e1 = r1 * e1 + (1 - r1) * (n + 1.0);
  }
  EXPECT_NEAR(emas[0].params[0][0].item<float>(), e0, 1e-5);
  EXPECT_NEAR(emas[1].params[0][0].item<float>(), e1, 1e-5);
  EXPECT_DOUBLE_EQ(tr::ema_rate_at(0.9999, 0, false), 0.9999);
}

TEST(Ema, SkippedStepLeavesTheAverageUnchanged) {
  at::Tensor p = at::full({3}, 2.0);
  auto emas = tr::make_emas({0.5}, {at::zeros({3})});
  tr::update_emas(emas, {p}, 100, /*warmup=*/false, at::ones({}));
  EXPECT_TRUE(at::equal(emas[0].params[0], at::zeros({3})));
  tr::update_emas(emas, {p}, 100, /*warmup=*/false, at::zeros({}));
  EXPECT_TRUE(at::allclose(emas[0].params[0], at::ones({3})));
}

// The per-tensor lerps (the CPU's) and the multi-tensor weighted sum (CUDA's) move averages
// alike, to fp32 rounding, and exactly at the weights that matter most: 0 (a skipped step) and 1
// (the post-hoc EMA's first step). Shapes of a UNet's parameters, one of them channels-last.
TEST(Ema, BothKernelsMoveAveragesAsTheFormula) {
  auto g = tr::cpu_generator(5);
  std::vector<at::Tensor> params{
      at::randn({64, 32, 3, 3}, g), at::randn({64}, g),
      at::randn({16, 8, 3, 3}, g).contiguous(at::MemoryFormat::ChannelsLast), at::randn({1}, g)};
  std::vector<at::Tensor> start;
  for (auto& p : params) {
    start.push_back(p + at::randn(p.sizes(), g));
    p.requires_grad_(true);
  }
  for (const double w : {0.0, 1e-4, 0.3, 0.5, 0.7, 1.0}) {
    for (const auto kernels : {tr::AverageKernels::per_tensor, tr::AverageKernels::multi_tensor}) {
      SCOPED_TRACE(std::to_string(w) +
                   (kernels == tr::AverageKernels::per_tensor ? " per tensor" : " multi"));
      std::vector<at::Tensor> averages;
      for (const auto& s : start)
        averages.push_back(s.clone());
      tr::move_averages(averages, params, at::full({}, w), kernels);
      for (std::size_t i = 0; i < params.size(); ++i) {
        EXPECT_FALSE(averages[i].requires_grad());
        const at::Tensor want =
            (1 - w) * start[i].to(at::kDouble) + w * params[i].detach().to(at::kDouble);
        EXPECT_LT((averages[i].to(at::kDouble) - want).abs().max().item<double>(),
                  1e-6 * want.abs().max().item<double>());
        if (w == 0.0) {
          EXPECT_TRUE(at::equal(averages[i], start[i]));
        }
        if (w == 1.0) {
          EXPECT_TRUE(at::equal(averages[i], params[i].detach()));
        }
      }
    }
  }
  EXPECT_EQ(tr::average_kernels_for(at::kCPU), tr::AverageKernels::per_tensor);
  EXPECT_EQ(tr::average_kernels_for(c10::Device(at::kCUDA, 0)), tr::AverageKernels::multi_tensor);
}

TEST(LossScaler, SkipsOnInfAndRecovers) {
  const auto skipped = [](const at::Tensor& found_inf) { return found_inf.item<float>() == 1.0f; };
  auto s = tr::make_loss_scaler(true, 1024.0, 3, 1.0, at::kCPU);
  at::Tensor g = at::full({4}, 2048.0);
  EXPECT_FALSE(skipped(tr::unscale_and_update(s, {g})));
  EXPECT_TRUE(at::allclose(g, at::full({4}, 2.0)));  // unscaled
  g[1] = INFINITY;
  EXPECT_TRUE(skipped(tr::unscale_and_update(s, {g})));  // skipped ...
  EXPECT_EQ(s.scale.item<float>(), 512.0f);              // ... and the scale halved
  for (int i = 0; i < 3; ++i) {
    at::Tensor ok = at::ones({4});
    EXPECT_FALSE(skipped(tr::unscale_and_update(s, {ok})));
  }
  EXPECT_EQ(s.scale.item<float>(), 1024.0f);  // grew back after growth_interval good steps
  auto tiny = tr::make_loss_scaler(true, 2.0, 100, 1.0, at::kCPU);
  at::Tensor bad = at::full({1}, NAN);
  EXPECT_TRUE(skipped(tr::unscale_and_update(tiny, {bad})));
  EXPECT_NO_THROW(tr::check_loss_scale(tiny));  // 1.0: at the minimum, not below
  tr::unscale_and_update(tiny, {bad});
  EXPECT_THROW(tr::check_loss_scale(tiny), tr::LossScaleCollapsed);
  // Disabled (fp32, bf16): never skips, never unscales.
  auto off = tr::make_loss_scaler(false, 1.0, 100, 1.0, at::kCPU);
  EXPECT_FALSE(skipped(tr::unscale_and_update(off, {bad})));
}

}  // namespace

namespace {

// The one place the network is called: it sees t * 1000 / T (diffusion.rescale_timesteps), also
// through a respaced sampler's index -> timestep map.
TEST(Denoiser, TheNetworkSeesTheScaledOriginalTimestep) {
  TempDir dir;
  const tr::Config c = tr::parse_config(tiny_config("unused", dir / "run"));
  torch::manual_seed(0);
  difftrain::model::UNet net(tr::unet_config(c, {16, 1, 0}));
  {
    torch::NoGradGuard no_grad;  // the output layer starts at zero: make the output depend on t
    for (auto& p : net->parameters())
      p.add_(at::randn_like(p) * 0.01);
  }
  net->eval();
  const tr::Denoiser denoiser = tr::make_denoiser(net, c);
  EXPECT_DOUBLE_EQ(denoiser.timestep_scale, 1000.0 / 50);
  const at::Tensor x = at::randn({3, 1, 16, 16});
  const at::Tensor t = at::tensor({0L, 7L, 49L});
  const at::Tensor direct = net->forward(x, t.to(at::kFloat) * 20.0);
  EXPECT_TRUE(at::allclose(denoiser(x, t), direct, 1e-6, 1e-7));
  EXPECT_TRUE(at::allclose(denoiser.with_labels({})(x, t), direct, 1e-6, 1e-7));
  EXPECT_FALSE(at::allclose(net->forward(x, t.to(at::kFloat)), direct, 1e-6, 1e-7));
  const auto r = difftrain::diffusion::respace(tr::make_diffusion(c),
                                               difftrain::diffusion::space_timesteps(50, "10"));
  const at::Tensor index = at::tensor({0L, 9L, 9L});
  const at::Tensor original = r.timestep_map.index_select(0, index);
  EXPECT_TRUE(at::allclose(
      difftrain::diffusion::respaced_model(denoiser.with_labels({}), r.timestep_map)(x, index),
      net->forward(x, original.to(at::kFloat) * 20.0), 1e-6, 1e-7));
  tr::Config unscaled = c;
  unscaled.diffusion.rescale_timesteps = false;
  EXPECT_DOUBLE_EQ(tr::make_denoiser(net, unscaled).timestep_scale, 1.0);
}

// Classifier-free guidance (Ho & Salimans Eq. 6): the mean channels are uncond + s (cond -
// uncond), the learned variance channels the conditional call's; scale 1 is the conditional
// model and 0 the unconditional one; and its rescaled variant. (The guided call is one batch of 6:
// oneDNN's convolutions round it about 1e-6 apart from two batches of 3.)
TEST(Denoiser, GuidanceMixesTheConditionalAndUnconditionalMeans) {
  TempDir dir;
  const tr::Config c = tr::parse_config(tiny_config("unused", dir / "run"),
                                        {"data.class_conditional=true", "training.p_uncond=0.1"});
  torch::manual_seed(0);
  difftrain::model::UNet net(tr::unet_config(c, {16, 1, 4}));
  ASSERT_TRUE(net->config().null_class);
  {
    torch::NoGradGuard no_grad;  // the output layer starts at zero: make the output depend on y
    for (auto& p : net->parameters())
      p.add_(at::randn_like(p) * 0.05);
  }
  net->eval();
  const tr::Denoiser denoiser = tr::make_denoiser(net, c);
  const at::Tensor x = at::randn({3, 1, 16, 16});
  const at::Tensor t = at::tensor({0L, 20L, 49L}), y = at::tensor({0L, 3L, 1L});
  const at::Tensor cond = denoiser(x, t, y), uncond = denoiser(x, t, at::full_like(y, 4));
  ASSERT_EQ(cond.size(1), 2) << "mean and learned variance";
  ASSERT_GT((cond - uncond).abs().max().item<double>(), 1e-3);
  const auto guided = [&](double s) { return denoiser.with_guidance(y, 4, s)(x, t); };
  const at::Tensor g = guided(2.5);
  EXPECT_TRUE(at::allclose(
      g.narrow(1, 0, 1),
      uncond.narrow(1, 0, 1) + 2.5 * (cond.narrow(1, 0, 1) - uncond.narrow(1, 0, 1)), 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(g.narrow(1, 1, 1), cond.narrow(1, 1, 1), 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(guided(0).narrow(1, 0, 1), uncond.narrow(1, 0, 1), 1e-4, 1e-5));
  EXPECT_TRUE(at::equal(guided(1), cond));

  // Guidance rescale (Lin et al. Eq. 15-16): with phi = 1 each sample's guided mean has the
  // conditional mean's standard deviation; phi = 0.7 blends it with the plain guided mean.
  const at::Tensor mean_g = g.narrow(1, 0, 1), mean_cond = cond.narrow(1, 0, 1);
  const auto sample_std = [](const at::Tensor& v) { return v.flatten(1).std(1); };
  const at::Tensor full = denoiser.with_guidance(y, 4, 2.5, 1.0)(x, t);
  EXPECT_TRUE(at::allclose(sample_std(full.narrow(1, 0, 1)), sample_std(mean_cond), 1e-4, 1e-6));
  EXPECT_FALSE(at::allclose(sample_std(mean_g), sample_std(mean_cond), 1e-2, 1e-4));
  const at::Tensor ratio = (sample_std(mean_cond) / sample_std(mean_g)).view({-1, 1, 1, 1});
  const at::Tensor blended = denoiser.with_guidance(y, 4, 2.5, 0.7)(x, t);
  EXPECT_TRUE(
      at::allclose(blended.narrow(1, 0, 1), 0.7 * mean_g * ratio + 0.3 * mean_g, 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(blended.narrow(1, 1, 1), cond.narrow(1, 1, 1), 1e-4, 1e-5));
}

// An upsampler (model.low_res_size) is conditioned on x_0 area-downsampled, each low-res pixel the
// mean of its block (F.interpolate's "area"); the training step feeds that to the network, so the
// stem's low-res channels get a gradient; classifier-free guidance doubles it with the batch.
TEST(Denoiser, AnUpsamplerSeesItsImageAreaDownsampled) {
  TempDir dir;
  const tr::Config c = tr::parse_config(tiny_config("unused", dir / "run"),
                                        {"data.pad_to=0", "model.low_res_size=8",
                                         "data.class_conditional=true", "training.p_uncond=0.2"});
  torch::manual_seed(0);
  difftrain::model::UNet net(tr::unet_config(c, {16, 1, 4}));
  {
    torch::NoGradGuard no_grad;  // the output layer starts at zero: let gradients through
    for (auto& p : net->parameters())
      p.add_(at::randn_like(p) * 0.05);
  }
  const tr::Denoiser denoiser = tr::make_denoiser(net, c);
  const at::Tensor x0 = at::rand({3, 1, 16, 16}, at::kDouble) * 2 - 1;
  const at::Tensor low = denoiser.low_res_of(x0);
  ASSERT_EQ(low.sizes(), (std::vector<int64_t>{3, 1, 8, 8}));
  for (const auto& [i, y, x] : {std::tuple{0, 0, 0}, {1, 3, 5}, {2, 7, 7}}) {
    const double block =
        x0[i][0].slice(0, 2 * y, 2 * y + 2).slice(1, 2 * x, 2 * x + 2).mean().item<double>();
    EXPECT_NEAR(low[i][0][y][x].item<double>(), block, 1e-15);
  }
  tr::Config plain = c;
  plain.model.low_res_size = 0;
  EXPECT_FALSE(tr::make_denoiser(difftrain::model::UNet(tr::unet_config(plain, {16, 1, 4})), plain)
                   .low_res_of(x0)
                   .defined());

  // One step's gradient reaches the stem's weights on the low-res channel.
  auto comm = difftrain::parallel::make_local_communicator();
  const auto diffusion = tr::make_diffusion(c);
  const tr::StepContext context{denoiser, diffusion, tr::make_loss_spec(c), c.training, *comm};
  const at::Tensor xf = x0.to(at::kFloat);
  const tr::StepInputs in{xf, at::tensor({5L, 20L, 40L}), at::ones({3}), at::randn_like(xf),
                          at::tensor({0L, 1L, 3L})};
  net->zero_grad();
  tr::forward_backward(context, in);
  const at::Tensor stem_grad = net->named_parameters()["input_blocks.0.0.weight"].grad();
  ASSERT_EQ(stem_grad.size(1), 2);
  EXPECT_GT(stem_grad.select(1, 1).abs().max().item<double>(), 0);

  // Guided: one call on the doubled batch, the low-res images doubled with it.
  net->eval();
  torch::NoGradGuard no_grad;
  const at::Tensor y = at::tensor({0L, 1L, 3L}), t = at::tensor({1L, 2L, 3L});
  const at::Tensor xt = at::randn({3, 1, 16, 16}), lowf = low.to(at::kFloat);
  const at::Tensor cond = denoiser(xt, t, y, lowf),
                   uncond = denoiser(xt, t, at::full_like(y, 4), lowf);
  const at::Tensor g = denoiser.with_guidance(y, 4, 3.0, 0.0, lowf)(xt, t);
  EXPECT_TRUE(at::allclose(
      g.narrow(1, 0, 1),
      uncond.narrow(1, 0, 1) + 3.0 * (cond.narrow(1, 0, 1) - uncond.narrow(1, 0, 1)), 1e-4, 1e-5));
}

// A noise-conditioned upsampler's step: the network sees x_0 downsampled and noised by the forward
// process to each sample's drawn level, and is told the level, so the step's loss is that of the
// denoiser called by hand on q_sample(low_res, level, noise); the low_res_t levels matter.
TEST(Denoiser, ANoiseConditionedUpsamplerTrainsOnItsImageNoisedToTheDrawnLevel) {
  TempDir dir;
  const tr::Config c =
      tr::parse_config(tiny_config("unused", dir / "run"),
                       {"data.pad_to=0", "model.low_res_size=8", "model.low_res_noise=true"});
  torch::manual_seed(0);
  difftrain::model::UNet net(tr::unet_config(c, {16, 1, 0}));
  {
    torch::NoGradGuard no_grad;
    for (auto& p : net->parameters())
      p.add_(at::randn_like(p) * 0.05);
  }
  const tr::Denoiser denoiser = tr::make_denoiser(net, c);
  auto comm = difftrain::parallel::make_local_communicator();
  const auto diffusion = tr::make_diffusion(c);
  const auto loss = tr::make_loss_spec(c);
  const tr::StepContext context{denoiser, diffusion, loss, c.training, *comm};
  const at::Tensor x0 = at::rand({3, 1, 16, 16}) * 2 - 1, eps = at::randn_like(x0);
  const at::Tensor t = at::tensor({5L, 20L, 40L}), levels = at::tensor({0L, 10L, 45L});
  const at::Tensor low_eps = at::randn({3, 1, 8, 8});
  const tr::StepInputs in{x0, t, at::ones({3}), eps, {}, levels, low_eps};
  const tr::StepTerms terms = tr::forward_backward(context, in);

  torch::NoGradGuard no_grad;
  const at::Tensor x_t = difftrain::diffusion::q_sample(diffusion, x0, t, eps);
  const at::Tensor low =
      difftrain::diffusion::q_sample(diffusion, denoiser.low_res_of(x0), levels, low_eps);
  const auto by_hand = [&](const at::Tensor& l) {
    return difftrain::diffusion::training_terms(diffusion, loss, denoiser(x_t, t, {}, low, l), x0,
                                                x_t, t, eps)
        .loss.to(at::kDouble);
  };
  EXPECT_TRUE(at::allclose(terms.loss, by_hand(levels), 1e-5, 1e-7))
      << terms.loss << by_hand(levels);
  EXPECT_FALSE(at::allclose(terms.loss, by_hand(at::zeros_like(levels)), 1e-3, 1e-5))
      << "the levels reach the network";
}

// The telemetry between log lines: means over samples, loss by quartile of t, the gradient norm
// over applied steps only, skipped steps and their longest run, per-t buckets, non-finite losses.
TEST(Metrics, SumsOverSamplesAndStepsAndResets) {
  auto comm = difftrain::parallel::make_local_communicator();
  tr::Metrics m(at::kCPU, /*num_timesteps=*/8, /*timestep_buckets=*/2);
  const auto d = [](std::vector<double> v) { return at::tensor(v, at::kDouble); };
  const at::Tensor t = at::tensor({0L, 3L, 4L, 7L});
  m.add_samples(t, d({1, 2, 3, 4}), d({0.5, 1, 1.5, 2}), d({0.5, 1, 1.5, 2}), d({0.5, 1, 1.5, 2}));
  m.add_samples(at::tensor({1L, 6L}), d({NAN, 6}), d({0, 3}), d({0, 3}), d({0, 3}));
  const auto step = [&](double norm, double skipped) {
    m.add_step(at::scalar_tensor(norm, at::kFloat), at::scalar_tensor(skipped, at::kFloat));
  };
  step(2, 0);
  step(NAN, 1);
  step(NAN, 1);
  step(4, 0);
  step(NAN, 1);
  m.add_data_wait(0.2);
  m.add_data_wait(0.3);
  const std::vector<int64_t> bad = m.nonfinite_timesteps_and_reset();
  EXPECT_EQ(bad, std::vector<int64_t>{1});
  const tr::MetricsSummary s = m.reduce_and_reset(*comm);
  EXPECT_EQ(s.samples, 6);
  EXPECT_TRUE(std::isnan(s.loss));  // a non-finite loss shows in the mean
  EXPECT_DOUBLE_EQ(s.mse, (0.5 + 1 + 1.5 + 2 + 0 + 3) / 6);
  EXPECT_DOUBLE_EQ(s.loss_quartile[1], 2.0);  // q = floor(4t / T): quartile 1 holds t = 3 alone
  EXPECT_EQ(s.steps, 5);
  EXPECT_EQ(s.skipped_steps, 3);
  EXPECT_EQ(s.longest_skip_run, 2);
  EXPECT_DOUBLE_EQ(s.grad_norm, 3.0);            // mean of the applied steps' norms, 2 and 4
  EXPECT_DOUBLE_EQ(s.data_wait.mean_ms, 100.0);  // 0.5 s over 5 steps
  EXPECT_DOUBLE_EQ(s.data_wait.max_ms, 100.0);
  EXPECT_EQ(s.data_wait.slowest_rank, 0);
  const nlohmann::json stats = m.timestep_stats_and_reset(*comm);
  ASSERT_EQ(stats["timestep_buckets"].size(), 2u);
  EXPECT_EQ(stats["timestep_buckets"][0]["count"], 3);  // t = 0, 3, 1
  EXPECT_EQ(stats["timestep_buckets"][1]["count"], 3);  // t = 4, 7, 6
  EXPECT_DOUBLE_EQ(stats["timestep_buckets"][1]["mse_mean"].get<double>(), (1.5 + 2 + 3) / 3);
  // Reset: the next period starts from zero, but a run of skips continues across periods.
  step(NAN, 1);
  const tr::MetricsSummary next = m.reduce_and_reset(*comm);
  EXPECT_EQ(next.samples, 0);
  EXPECT_EQ(next.steps, 1);
  EXPECT_EQ(next.longest_skip_run, 2);  // the run that ended the last period continues
  EXPECT_EQ(next.data_wait.mean_ms, 0.0);
  EXPECT_TRUE(m.nonfinite_timesteps_and_reset().empty());
}

// The console line of a metrics record; the GPU memory part only where the record has it (a run
// on a GPU: tests/cuda checks the values), and none on the CPU.
TEST(Metrics, LogLineShowsGpuMemoryOnlyWhenMeasured) {
  nlohmann::json r = {{"step", 40},
                      {"loss", 0.5},
                      {"mse", 0.4},
                      {"vb", 0.1},
                      {"loss_q0", 1.0},
                      {"loss_q1", 0.5},
                      {"loss_q2", 0.25},
                      {"loss_q3", 0.125},
                      {"grad_norm", 0.3},
                      {"lr", 1e-4},
                      {"loss_scale", 1.0},
                      {"images_per_s", 64.0},
                      {"step_time_ms", 500.0},
                      {"rss_mb", 512.0}};
  EXPECT_EQ(tr::log_line(r, 0),
            "step 40 | loss 0.5000 mse 0.4000 vb 0.1000 | by t quartile 1.000 0.500 0.250 0.125 "
            "| grad 0.300 lr 1.00e-04 scale 1 | 64.0 img/s 500 ms/step 512 MiB");
  // The data wait shows once the slowest rank's takes a tenth of the step.
  r["data_wait_ms"] = 20.0;
  r["data_wait_max_ms"] = 40.0;
  r["data_wait_slowest_rank"] = 3;
  EXPECT_EQ(tr::log_line(r, 0).find("waits"), std::string::npos);
  r["data_wait_max_ms"] = 60.0;
  EXPECT_NE(tr::log_line(r, 0).find("500 ms/step (rank 3 waits 60.0 ms for data) 512 MiB"),
            std::string::npos)
      << tr::log_line(r, 0);
  r["device_peak_allocated_mb"] = 1536.4;
  r["device_reserved_mb"] = 2048.0;
  const std::string line = tr::log_line(r, 100);
  EXPECT_NE(line.find("step 40/100 (40%, ETA 30s)"), std::string::npos) << line;
  EXPECT_NE(line.find("512 MiB | GPU 1536 MiB peak, 2048 MiB reserved"), std::string::npos) << line;
  EXPECT_FALSE(tr::device_memory_and_reset_peak(at::kCPU).has_value());
}

}  // namespace
