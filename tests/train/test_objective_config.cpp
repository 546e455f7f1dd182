// The objective keys of the config: defaults keep the reference loss, every option reaches the
// diffusion, the loss spec and the timestep sampler, and undefined combinations are ConfigErrors
// at validate time that name the keys.
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
  EXPECT_EQ(c.diffusion.weighting, dd::SimpleWeighting::none);
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
  EXPECT_EQ(back.diffusion.weighting, dd::SimpleWeighting::snr);
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
                      {"'diffusion.zero_terminal_snr' = true", "'epsilon'", "divides by abar = 0",
                       "the v or start_x target"});
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

TEST(ObjectiveConfig, StoredConfigWithAnUndefinedObjectiveIsRefused) {
  // sample and eval read the config stored in a checkpoint, and validate it before building
  // anything from it (load_trained_model).
  std::vector<std::string> unknown_keys;
  const tr::Config stored = tr::parse_stored_config(
      tr::to_yaml(tr::parse_config(kBase, {"diffusion.zero_terminal_snr=true"})), "stored",
      unknown_keys);
  EXPECT_THROW(tr::validate(stored), tr::ConfigError);
}

TEST(ObjectiveConfig, ExampleConfigValidates) {
  const tr::Config c = tr::load_config(DIFFTRAIN_SOURCE_DIR "/configs/cifar10_vpred_minsnr.yaml");
  tr::validate(c);
  EXPECT_EQ(c.diffusion.model_mean_type, dd::ModelMeanType::v);
  EXPECT_EQ(c.diffusion.weighting, dd::SimpleWeighting::min_snr);
  EXPECT_EQ(c.diffusion.loss, tr::Loss::hybrid);
  EXPECT_TRUE(dd::has_zero_terminal_snr(tr::make_diffusion(c)));
}

}  // namespace
