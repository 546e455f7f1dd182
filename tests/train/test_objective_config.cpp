// The objective keys of the config (issue 8): defaults keep the reference loss, every new option
// reaches the diffusion, the loss spec and the timestep sampler, and undefined combinations are
// ConfigErrors at validate time that name the keys.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/test_files.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "diffusion/weighting.hpp"
#include "train/config.hpp"
#include "train/setup.hpp"

namespace tr = difftrain::train;
namespace dd = difftrain::diffusion;

namespace {

const char* kBase =
    "device: cpu\n"
    "data: {train: data/manifest.json}\n"
    "model: {model_channels: 32, channel_mult: [1, 2], num_res_blocks: 1,"
    " attention_resolutions: [8]}\n"
    "diffusion: {schedule: cosine, steps: 50, loss: hybrid}\n"
    "logging: {timestep_buckets: 5}\n";

tr::Config config(const std::vector<std::string>& overrides) {
  const tr::Config c = tr::parse_config(kBase, overrides);
  tr::validate(c);
  return c;
}

void expect_config_error(const std::vector<std::string>& overrides,
                         const std::vector<std::string>& fragments) {
  try {
    config(overrides);
    FAIL() << "no error for " << overrides[0];
  } catch (const tr::ConfigError& e) {
    for (const auto& f : fragments)
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos)
          << "expected '" << f << "' in: " << e.what();
  }
}

TEST(ObjectiveConfig, DefaultsAreTheReferenceLoss) {
  const tr::Config c = config({});
  EXPECT_EQ(c.diffusion.weighting, "none");
  EXPECT_FALSE(c.diffusion.zero_terminal_snr);
  EXPECT_FALSE(c.diffusion.stratified_timesteps);
  const dd::LossSpec spec = tr::make_loss_spec(c);
  EXPECT_EQ(spec.weighting, dd::SimpleWeighting::none);
  EXPECT_TRUE(spec.mse && spec.vb);
  EXPECT_DOUBLE_EQ(spec.vb_scale, 0.001 * 50);
  const auto d = tr::make_diffusion(c);
  EXPECT_TRUE(at::equal(d.betas, dd::get_named_beta_schedule(dd::BetaSchedule::cosine, 50)));
  const auto s = tr::make_timestep_sampler(c, 50, at::kCPU);
  EXPECT_EQ(s.kind, dd::TimestepSamplerKind::uniform);
  EXPECT_FALSE(s.stratified);
  // The new keys are saved with the resolved config and read back.
  const tr::Config back = tr::parse_config(tr::to_yaml(config({"diffusion.weighting=snr"})));
  EXPECT_EQ(back.diffusion.weighting, "snr");
  EXPECT_DOUBLE_EQ(back.diffusion.min_snr_gamma, 5.0);
}

TEST(ObjectiveConfig, EveryOptionReachesTheDiffusion) {
  const tr::Config c = config(
      {"diffusion.schedule=sigmoid", "diffusion.zero_terminal_snr=true",
       "diffusion.model_mean_type=v", "diffusion.weighting=min_snr", "diffusion.min_snr_gamma=3",
       "diffusion.timestep_sampler=logit_normal", "diffusion.stratified_timesteps=true",
       "diffusion.logit_normal_mean=-0.5", "diffusion.logit_normal_std=1.5"});
  const auto d = tr::make_diffusion(c);
  EXPECT_EQ(d.model_mean_type, dd::ModelMeanType::v);
  EXPECT_TRUE(dd::has_zero_terminal_snr(d));
  const dd::LossSpec spec = tr::make_loss_spec(c);
  EXPECT_EQ(spec.weighting, dd::SimpleWeighting::min_snr);
  EXPECT_DOUBLE_EQ(spec.min_snr_gamma, 3.0);
  const auto s = tr::make_timestep_sampler(c, 50, at::kCPU);
  EXPECT_EQ(s.kind, dd::TimestepSamplerKind::logit_normal);
  EXPECT_TRUE(s.stratified);
  EXPECT_DOUBLE_EQ(s.logit_normal_mean, -0.5);
  EXPECT_DOUBLE_EQ(s.logit_normal_std, 1.5);
  EXPECT_TRUE(
      tr::make_timestep_sampler(config({"diffusion.timestep_sampler=stratified"}), 50, at::kCPU)
          .stratified);
  const auto sigmoid = config({"diffusion.weighting=sigmoid", "diffusion.sigmoid_bias=-2"});
  EXPECT_EQ(tr::make_loss_spec(sigmoid).weighting, dd::SimpleWeighting::sigmoid);
  EXPECT_DOUBLE_EQ(tr::make_loss_spec(sigmoid).sigmoid_bias, -2.0);
}

TEST(ObjectiveConfig, UndefinedCombinationsAreRejected) {
  expect_config_error({"diffusion.zero_terminal_snr=true"},
                      {"'diffusion.zero_terminal_snr'", "'epsilon'", "divides by zero", "'v'"});
  expect_config_error({"diffusion.model_mean_type=previous_x", "diffusion.weighting=min_snr"},
                      {"'diffusion.weighting' = 'min_snr'", "'previous_x'"});
  expect_config_error({"diffusion.model_mean_type=previous_x", "diffusion.weighting=sigmoid"},
                      {"'diffusion.weighting' = 'sigmoid'", "'previous_x'"});
  expect_config_error({"diffusion.weighting=snr", "diffusion.loss=vlb"},
                      {"'diffusion.weighting' = 'snr'", "does not have"});
  expect_config_error({"diffusion.weighting=min_snr", "diffusion.min_snr_gamma=0"},
                      {"'diffusion.min_snr_gamma' = 0"});
  expect_config_error({"diffusion.logit_normal_std=0"}, {"'diffusion.logit_normal_std' = 0"});
  expect_config_error({"diffusion.weighting=minsnr"},
                      {"'diffusion.weighting'", "unknown weighting 'minsnr'", "min_snr"});
  expect_config_error({"diffusion.timestep_sampler=logit-normal"},
                      {"'diffusion.timestep_sampler'", "logit_normal", "stratified"});
  expect_config_error({"diffusion.schedule=sigmod"}, {"unknown schedule 'sigmod'", "sigmoid"});
  expect_config_error({"diffusion.model_mean_type=vv"}, {"unknown model_mean_type 'vv'", "v)"});
  // Defined: v or start_x with a zero terminal SNR, previous_x with none, any weighting of the
  // simple loss.
  EXPECT_NO_THROW(config({"diffusion.zero_terminal_snr=true", "diffusion.model_mean_type=v"}));
  EXPECT_NO_THROW(
      config({"diffusion.zero_terminal_snr=true", "diffusion.model_mean_type=start_x"}));
  EXPECT_NO_THROW(
      config({"diffusion.zero_terminal_snr=true", "diffusion.model_mean_type=previous_x"}));
  EXPECT_NO_THROW(config({"diffusion.loss=simple", "diffusion.model_var_type=fixed_small",
                          "diffusion.weighting=sigmoid"}));
}

TEST(ObjectiveConfig, MakeDiffusionRefusesAnUndefinedObjectiveToo) {
  // sample and eval read a stored config: make_diffusion checks even without validate().
  const tr::Config c = tr::parse_config(kBase, {"diffusion.zero_terminal_snr=true"});
  EXPECT_THROW(tr::make_diffusion(c), tr::ConfigError);
}

TEST(ObjectiveConfig, ExampleConfigValidates) {
  const tr::Config c = tr::load_config(DIFFTRAIN_SOURCE_DIR "/configs/cifar10_vpred_minsnr.yaml");
  tr::validate(c);
  EXPECT_EQ(c.diffusion.model_mean_type, "v");
  EXPECT_EQ(c.diffusion.weighting, "min_snr");
  EXPECT_EQ(c.diffusion.loss, "hybrid");
  EXPECT_TRUE(dd::has_zero_terminal_snr(tr::make_diffusion(c)));
}

// The whole path as a user runs it, on a tiny UNet and 16x16 images: train v-prediction with a
// zero terminal SNR, Min-SNR weighting and stratified logit-normal timesteps; the per-timestep
// statistics show mse, weighted mse and vb; sample and eval give finite results.
TEST(ObjectiveConfig, TrainSampleAndEvalWithVPredictionAndZeroTerminalSnr) {
  using difftrain::testing::run;
  difftrain::testing::TempDir dir;
  const std::string manifest =
      difftrain::testing::write_synthetic_set(dir / "data", {24}, 14, 14, 1, 10).manifest;
  const std::string run_dir = dir / "run";
  difftrain::testing::write_text(
      dir / "config.yaml",
      "seed: 1\ndevice: cpu\n"
      "data: {train: " +
          manifest +
          ", pad_to: 16}\n"
          "model: {model_channels: 32, channel_mult: [1, 2], num_res_blocks: 1,"
          " attention_resolutions: [8]}\n"
          "diffusion: {schedule: sigmoid, steps: 20, zero_terminal_snr: true, model_mean_type: v,"
          " loss: hybrid, weighting: min_snr, min_snr_gamma: 1.0, timestep_sampler: logit_normal,"
          " stratified_timesteps: true}\n"
          "training: {batch_size: 8, lr: 0.001, max_steps: 4, checkpoint_every: 4, ema_rates: "
          "[0.5],"
          " threads: 1}\n"
          "logging: {run_dir: " +
          run_dir +
          ", log_every: 2, timestep_stats_every: 4,"
          " timestep_buckets: 4}\n");
  const std::string bin = "OMP_NUM_THREADS=1 " + std::string(DIFFTRAIN_BINARY);
  auto r = run(bin + " train --config " + (dir / "config.yaml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;

  std::ifstream stats(run_dir + "/timestep_metrics.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(stats, line)) << "no timestep statistics";
  const auto buckets = nlohmann::json::parse(line)["timestep_buckets"];
  ASSERT_EQ(buckets.size(), 4u);
  int64_t count = 0;
  for (const auto& b : buckets) {
    count += b["count"].get<int64_t>();
    if (b["count"].get<int64_t>() == 0) continue;
    const double mse = b["mse_mean"], weighted = b["weighted_mse_mean"], vb = b["vb_mean"];
    EXPECT_TRUE(std::isfinite(mse) && std::isfinite(weighted) && std::isfinite(vb)) << b;
    // min(SNR, 1) / (SNR + 1) <= 1/2 for the v target.
    EXPECT_LE(weighted, 0.5 * mse + 1e-9) << b;
    EXPECT_NEAR(b["loss_mean"].get<double>(), weighted + vb, 1e-6 * (1 + weighted + vb)) << b;
  }
  EXPECT_EQ(count, 4 * 8);  // 4 steps of 8 since the start

  r = run(bin + " sample --run " + run_dir + " --num 2 --sampler ddpm --out " + (dir / "ddpm"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run(bin + " sample --run " + run_dir + " --num 2 --sampler ddim --steps 5 --out " +
          (dir / "ddim"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run(bin + " eval --run " + run_dir + " --data " + manifest + " --num 2 --out " +
          (dir / "eval.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto report = nlohmann::json::parse(difftrain::testing::read_text(dir / "eval.json"));
  EXPECT_TRUE(std::isfinite(report["total_bpd"].get<double>())) << report.dump();
  EXPECT_EQ(report["prior_bpd"].get<double>(), 0.0);  // L_T = 0 at a zero terminal SNR
}

}  // namespace
