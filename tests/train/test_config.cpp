// The config: defaults, typed choices, errors that name the key.
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "train/config.hpp"
#include "train/setup.hpp"
#include "trainer_fixture.hpp"

namespace tr = difftrain::train;
using difftrain::testing::tiny_config;

namespace {

TEST(Config, ChannelsLastAutoMeansUnderAutocast) {
  auto c = tr::parse_config(tiny_config("unused", "runs/x"));
  EXPECT_EQ(c.model.channels_last, tr::ChannelsLast::automatic);
  EXPECT_FALSE(tr::use_channels_last(c, tr::Precision::fp32));
  EXPECT_TRUE(tr::use_channels_last(c, tr::Precision::bf16));
  EXPECT_TRUE(tr::use_channels_last(c, tr::Precision::fp16));
  c = tr::parse_config(tiny_config("unused", "runs/x"), {"model.channels_last=true"});
  EXPECT_TRUE(tr::use_channels_last(c, tr::Precision::fp32));
  c = tr::parse_config(tiny_config("unused", "runs/x"), {"model.channels_last=false"});
  EXPECT_FALSE(tr::use_channels_last(c, tr::Precision::bf16));
}

// training.tf32 sets cuDNN's and cuBLAS's TF32 flags together, or leaves LibTorch's alone; it
// round-trips through the resolved config, and a wrong value names the valid ones.
TEST(Config, Tf32SetsBothFlagsOrLeavesThemAlone) {
  at::Context& context = at::globalContext();
  const bool convolutions = context.allowTF32CuDNN(), matmuls = context.allowTF32CuBLAS();
  const auto settings = [&] {
    return std::pair{context.allowTF32CuDNN(), context.allowTF32CuBLAS()};
  };
  auto c = tr::parse_config(tiny_config("unused", "runs/x"));
  EXPECT_EQ(c.training.tf32, tr::Tf32::library_default);
  context.setAllowTF32CuDNN(true);
  context.setAllowTF32CuBLAS(false);
  tr::apply_process_settings(c);
  EXPECT_EQ(settings(), std::pair(true, false));
  EXPECT_EQ(tr::tf32_in_use(), "TF32 convolutions, fp32 matmuls");

  c = tr::parse_config(tiny_config("unused", "runs/x"), {"training.tf32=true"});
  tr::apply_process_settings(c);
  EXPECT_EQ(settings(), std::pair(true, true));
  EXPECT_EQ(tr::tf32_in_use(), "TF32 convolutions and matmuls");
  EXPECT_NE(tr::to_yaml(c).find("tf32: true"), std::string::npos);
  EXPECT_EQ(tr::parse_config(tr::to_yaml(c)).training.tf32, tr::Tf32::on);

  tr::apply_process_settings(
      tr::parse_config(tiny_config("unused", "runs/x"), {"training.tf32=false"}));
  EXPECT_EQ(settings(), std::pair(false, false));
  EXPECT_EQ(tr::tf32_in_use(), "no TF32");
  context.setAllowTF32CuDNN(convolutions);
  context.setAllowTF32CuBLAS(matmuls);
  try {
    tr::parse_config(tiny_config("unused", "runs/x"), {"training.tf32=yes"});
    FAIL() << "no error";
  } catch (const tr::ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("training.tf32"), std::string::npos) << what;
    EXPECT_NE(what.find("default, true, false"), std::string::npos) << what;
  }
}

// training.cudnn_benchmark (default true) turns cuDNN's benchmark mode on, false turns it off, and
// `deterministic` keeps it off whatever it says; the run's first line on a GPU says which.
TEST(Config, CudnnBenchmarkIsOnUnlessTurnedOffOrDeterministic) {
  at::Context& context = at::globalContext();
  const bool before = context.benchmarkCuDNN();
  auto c = tr::parse_config(tiny_config("unused", "runs/x"));
  EXPECT_TRUE(c.training.cudnn_benchmark);
  context.setBenchmarkCuDNN(false);
  tr::apply_process_settings(c);
  EXPECT_TRUE(context.benchmarkCuDNN());
  EXPECT_NE(tr::cuda_settings_in_use().find(", cuDNN benchmark mode"), std::string::npos);

  c = tr::parse_config(tiny_config("unused", "runs/x"), {"training.cudnn_benchmark=false"});
  tr::apply_process_settings(c);
  EXPECT_FALSE(context.benchmarkCuDNN());
  EXPECT_NE(tr::cuda_settings_in_use().find(", cuDNN heuristics"), std::string::npos);
  EXPECT_FALSE(tr::parse_config(tr::to_yaml(c)).training.cudnn_benchmark);

  context.setBenchmarkCuDNN(true);
  tr::apply_process_settings(
      tr::parse_config(tiny_config("unused", "runs/x"), {"deterministic=true"}));
  EXPECT_FALSE(context.benchmarkCuDNN());
  context.setDeterministicAlgorithms(false, false);
  context.setBenchmarkCuDNN(before);
}

// Each config error names its key.
void expect_config_error(const std::vector<std::string>& overrides, const std::string& message,
                         int world = 1) {
  try {
    const auto c = tr::parse_config(tiny_config("data/manifest.json", "runs/x"), overrides);
    tr::validate(c);
    tr::validate_for_world(c, world);
    tr::unet_config(c, {16, 1, 0});
    FAIL() << "no error for " << overrides[0];
  } catch (const tr::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos)
        << "expected '" << message << "' in: " << e.what();
  }
}

// guided-diffusion's 512 px models: channel_mult (0.5, 1, 1, 2, 2, 4, 4). The resolved config
// writes whole multipliers as integers.
TEST(Config, FractionalChannelMultRoundTrips) {
  const auto c = tr::parse_config(tiny_config("unused", "runs/x"),
                                  {"model.model_channels=64", "model.channel_mult=[0.5, 1]"});
  EXPECT_EQ(c.model.channel_mult, (std::vector<double>{0.5, 1}));
  tr::validate(c);
  EXPECT_EQ(tr::unet_config(c, {16, 1, 0}).channel_mult, c.model.channel_mult);
  const std::string yaml = tr::to_yaml(c);
  EXPECT_NE(yaml.find("channel_mult: [0.5, 1]"), std::string::npos) << yaml;
  EXPECT_EQ(tr::parse_config(yaml).model.channel_mult, c.model.channel_mult);
}

TEST(Config, MissingSectionsTakeTheDefaults) {
  const auto c = tr::parse_config("data: {train: x.json}\n");
  EXPECT_EQ(c.training.batch_size, 128);
  EXPECT_EQ(c.logging.run_dir, "runs/default");
  EXPECT_EQ(tr::parse_config(tr::to_yaml(c)).data.train, "x.json");
}

TEST(Config, ErrorsNameTheKey) {
  expect_config_error({"training.lrr=0.1"},
                      "unknown key 'training.lrr' (did you mean 'training.lr'?)");
  expect_config_error({"trainig.lr=0.1"}, "unknown key 'trainig' (did you mean 'training'?)");
  expect_config_error({"training.lr=fast"}, "key 'training.lr' must be a number");
  expect_config_error({"model.channels_last=maybe"}, "model.channels_last");
  expect_config_error({"training.lr=-0.1"}, "'training.lr' = -0.1 must be > 0");
  expect_config_error({"diffusion.steps=1"}, "'diffusion.steps': diffusion steps T = 1");
  expect_config_error({"diffusion.schedule=linear", "diffusion.steps=10"}, "T = 10");
  expect_config_error({"model.model_channels=48"}, "not divisible by the 32 GroupNorm groups");
  expect_config_error(
      {"model.channel_mult=[0.3, 1]"},
      "'model.model_channels' = 32 x channel_mult 0.3 = 9.6 channels is not a whole "
      "number of channels");
  expect_config_error({"model.channel_mult=[1, 0]"}, "'model.channel_mult' = [1, 0] must hold");
  expect_config_error({"model.attention_resolutions=[12]"}, "attention_resolutions");
  expect_config_error({"training.batch_size=9"}, "does not divide into 2 ranks", 2);
  expect_config_error({"training.microbatch=3"}, "does not divide the per-rank batch of 4", 2);
  expect_config_error({"diffusion.model_var_type=fixed_small"},
                      "'hybrid' needs a learned variance");
  expect_config_error({"diffusion.model_var_type=learnd"}, "unknown model_var_type 'learnd'");
  expect_config_error({"training.precision=fp8"},
                      "'training.precision': 'fp8' is not one of: fp32, bf16, fp16");
  expect_config_error({"training.p_uncond=1"}, "'training.p_uncond' = 1 must be in [0, 1)");
  expect_config_error({"model.low_res_noise=true"},
                      "'model.low_res_noise' = true needs an upsampler: set model.low_res_size");
  expect_config_error({"training.low_res_noise_max=1.5"},
                      "'training.low_res_noise_max' = 1.5 must be in [0, 1]");
  expect_config_error({"training.p_uncond=0.1"},
                      "'training.p_uncond' = 0.1 trains classifier-free guidance, which needs "
                      "class labels: set data.class_conditional to true");
  expect_config_error({"logging.sample_every=-1"}, "'logging.sample_every' = -1 must be >= 0");
  expect_config_error({"logging.sample_steps=1"},
                      "'logging.sample_steps' = 1 must be in [2, diffusion.steps]");
  expect_config_error({"logging.sample_num=0"}, "'logging.sample_num' = 0 must be >= 1");
  // An empty value is not the default in disguise.
  expect_config_error({"training.lr="},
                      "key 'training.lr' has no value: give one, or leave the key out for its "
                      "default");
}

// YAML keeps the first of two equal keys and drops the other without a word: a second
// `training:` section appended to a config, or a key repeated further down, is refused by name.
TEST(Config, AKeyGivenTwiceIsAnError) {
  for (const auto& [yaml, key] : std::vector<std::pair<std::string, std::string>>{
           {"data: {train: x.json}\ntraining: {lr: 0.1}\ntraining: {max_steps: 5}\n", "training"},
           {"data: {train: x.json}\ntraining:\n  lr: 0.1\n  batch_size: 8\n  lr: 0.2\n",
            "training.lr"}}) {
    try {
      tr::parse_config(yaml, {}, "dup.yaml");
      ADD_FAILURE() << "no error for\n" << yaml;
    } catch (const tr::ConfigError& e) {
      EXPECT_EQ(std::string(e.what()),
                "dup.yaml: key '" + key + "' is given twice; only the first would be read");
    }
  }
  // A stored config (another version's) is read as it is.
  std::vector<std::string> unknown;
  EXPECT_EQ(tr::parse_stored_config("data: {train: x.json}\ntraining: {lr: 0.1, lr: 0.2}\n",
                                    "stored", unknown)
                .training.lr,
            0.1);
}

// A directory is not a config file, nor a run directory a file.
TEST(Config, ADirectoryIsNotAConfigFile) {
  const std::string dir = ::testing::TempDir();
  try {
    tr::load_config(dir, {});
    ADD_FAILURE() << "no error";
  } catch (const tr::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), dir + ": a directory, not a config file");
  }
}

}  // namespace

namespace {

// The keys that define what the weights were trained for; the others (learning rate, EMA, batch,
// logging, weighting, ...) can change on resume.
TEST(Config, ObjectiveChangesNameTheKeys) {
  const auto c = tr::parse_config(tiny_config("unused", "runs/x"));
  EXPECT_TRUE(tr::objective_changes(c, c).empty());
  const auto other =
      tr::parse_config(tiny_config("unused", "runs/x"),
                       {"diffusion.schedule=linear", "diffusion.steps=1000", "training.lr=0.5",
                        "diffusion.weighting=min_snr", "training.ema_rates=[0.5]"});
  const std::vector<std::string> changes = tr::objective_changes(c, other);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0], "diffusion.schedule: cosine -> linear");
  EXPECT_EQ(changes[1], "diffusion.steps: 50 -> 1000");
  const auto v = tr::parse_config(
      tiny_config("unused", "runs/x"),
      {"diffusion.model_mean_type=v", "diffusion.loss=vlb", "diffusion.rescale_timesteps=false"});
  EXPECT_EQ(tr::objective_changes(c, v),
            (std::vector<std::string>{"diffusion.model_mean_type: epsilon -> v",
                                      "diffusion.loss: hybrid -> vlb",
                                      "diffusion.rescale_timesteps: true -> false"}));
}

// A resume on inputs of another size is allowed (the UNet is convolutional) but named.
TEST(Config, InputChangesNameTheKeys) {
  const auto c = tr::parse_config(tiny_config("unused", "runs/x"));
  EXPECT_TRUE(tr::input_changes(c, c).empty());
  const auto padded =
      tr::parse_config(tiny_config("unused", "runs/x"), {"data.pad_to=32", "training.lr=0.5"});
  EXPECT_EQ(tr::input_changes(padded, c), (std::vector<std::string>{"data.pad_to: 32 -> 16"}));
  EXPECT_TRUE(tr::objective_changes(padded, c).empty());
  // Data of another size with the same pad_to: the resolved image sizes differ.
  auto small = c, large = c;
  small.model.image_size = 16;
  large.model.image_size = 28;
  EXPECT_EQ(tr::input_changes(small, large),
            (std::vector<std::string>{"model.image_size: 16 -> 28"}));
  EXPECT_TRUE(tr::input_changes(small, c).empty());  // image_size 0: not resolved, not compared
}

// A named choice is read once into its enum and written back under the same name.
TEST(Config, ChoicesRoundTripThroughYaml) {
  const auto c = tr::parse_config(
      tiny_config("unused", "runs/x"),
      {"device=cuda:1", "data.last_batch=wrap", "model.channels_last=false",
       "diffusion.model_var_type=learned", "diffusion.timestep_sampler=loss-second-moment",
       "training.precision=fp16"});
  EXPECT_EQ(c.device, difftrain::parallel::parse_device_request("cuda:1"));
  EXPECT_EQ(c.data.last_batch, difftrain::data::LastBatch::wrap);
  EXPECT_EQ(c.model.channels_last, tr::ChannelsLast::off);
  EXPECT_EQ(c.training.precision, tr::Precision::fp16);
  const auto back = tr::parse_config(tr::to_yaml(c));
  EXPECT_EQ(tr::to_yaml(back), tr::to_yaml(c));
  EXPECT_NE(tr::to_yaml(c).find("timestep_sampler: loss-second-moment"), std::string::npos);
  EXPECT_NE(tr::to_yaml(c).find("device: cuda:1"), std::string::npos);
  const auto error = [](const std::string& override) {
    try {
      tr::parse_config("data: {train: x.json}\n", {override});
    } catch (const tr::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error("device=gpu").find("config key 'device': unknown device 'gpu'"),
            std::string::npos)
      << error("device=gpu");
  EXPECT_NE(error("data.last_batch=keep").find("'data.last_batch'"), std::string::npos);
  EXPECT_NE(error("diffusion.loss=l2").find("'diffusion.loss': 'l2' is not one of: hybrid"),
            std::string::npos);
}

}  // namespace
