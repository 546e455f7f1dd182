// The product on real data, as a user runs it: Fashion-MNIST (Debian's dataset-fashion-mnist)
// converted with h5shard, a class-conditional model trained with `difftrain train`, then
// `difftrain eval` and `difftrain sample --class 3` on its checkpoints. Tiny model and T = 100
// so that it fits the test budget; the learning it shows is real.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/difftrain_cli.hpp"
#include "data/h5.hpp"

namespace fs = std::filesystem;
using difftrain::testing::difftrain_cli;
using difftrain::testing::ProcessResult;
using difftrain::testing::run_command;

namespace {

const std::string kFashionMnist = "/usr/share/datasets/fashion-mnist";

double eval_bpd(const std::string& checkpoint, const std::string& data, const std::string& out) {
  const ProcessResult r = difftrain_cli("eval --checkpoint " + checkpoint + " --ema none --data " +
                                        data + " --num 8 --seed 7 --out " + out);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::ifstream f(out);
  const nlohmann::json j = nlohmann::json::parse(f);
  // 28x28 unpadded (28 -> 14): the bound is over the real pixels.
  EXPECT_EQ(j["dims"], 784);
  EXPECT_EQ(j["real_dims"], 784);
  EXPECT_EQ(j["total_bpd_real_pixels"], j["total_bpd"]);
  return j["total_bpd"].get<double>();
}

TEST(FashionMnistRun, TrainingLowersBitsPerDimAndSamplesAGivenClass) {
  ASSERT_TRUE(fs::exists(kFashionMnist + "/train-images-idx3-ubyte.gz"))
      << "install Debian's dataset-fashion-mnist (launch/setup.sh does)";
  const fs::path dir = fs::temp_directory_path() / ("difftrain_fmnist_" + std::to_string(getpid()));
  fs::remove_all(dir);
  const auto p = [&](const std::string& name) { return (dir / name).string(); };

  // 3000 training images (a 5% holdout of the train split) and 8 test images evaluated (common
  // noise: --seed).
  const std::string images = kFashionMnist + "/train-images-idx3-ubyte.gz " + kFashionMnist +
                             "/train-labels-idx1-ubyte.gz";
  ProcessResult r = run_command(std::string(H5SHARD_BINARY) +
                                " convert --format idx --quiet --split test --holdout 0.05 "
                                "--input " +
                                images + " --out " + p("train") + " --shards 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_command(std::string(H5SHARD_BINARY) + " convert --format idx --quiet --split test " +
                  "--input " + kFashionMnist + " --out " + p("test") + " --shards 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  std::ofstream(p("config.yaml"))
      << "seed: 1\ndevice: cpu\n"
         "data: {train: " +
             p("train") +
             "/manifest.json, class_conditional: true}\n"
             "model: {model_channels: 32, channel_mult: [1, 2], num_res_blocks: 1,"
             " attention_resolutions: []}\n"
             "diffusion: {schedule: cosine, steps: 100, loss: hybrid}\n"
             "training: {batch_size: 16, lr: 0.002, warmup_steps: 10, max_steps: 1,"
             " checkpoint_every: 1000, keep_checkpoints: 2, ema_rates: [0.99], threads: 1}\n"
             "logging: {run_dir: " +
             p("run") + ", log_every: 20}\n";
  // One step (warm-up: lr / 10) leaves the initial model; the same run then goes on to 80.
  r = difftrain_cli("train --config " + p("config.yaml"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = difftrain_cli("train --config " + p("config.yaml") +
                    " --resume auto --set training.max_steps=80");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The command it prints to go on is this one, overrides included.
  EXPECT_NE(r.output.find("resume:  difftrain train --config " + p("config.yaml") +
                          " --set training.max_steps=80 --resume auto"),
            std::string::npos)
      << r.output;

  const std::string ckpt = p("run/checkpoints/ckpt_000000");
  const double untrained = eval_bpd(ckpt + "001.pt", p("test"), p("untrained.json"));
  const double trained = eval_bpd(ckpt + "080.pt", p("test"), p("trained.json"));
  // Measured: 6.9 -> 4.3 bits/dim; a margin of 1 bit/dim is far outside the noise.
  std::cout << "bits/dim: untrained " << untrained << ", trained " << trained << "\n";
  EXPECT_LT(trained, untrained - 1.0) << "untrained " << untrained << ", trained " << trained;

  // The checkpoint stores the shape and classes the data gave the model: it samples also where
  // the training data is gone.
  fs::rename(p("train"), p("moved"));
  r = difftrain_cli("sample --run " + p("run") + " --num 4 --steps 10 --class 3 --out " +
                    p("coats"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(difftrain::h5::File::open(p("coats.h5")).read<int64_t>("labels"),
            (std::vector<int64_t>{3, 3, 3, 3}));
  EXPECT_TRUE(fs::exists(p("coats.png")));
  r = difftrain_cli("sample --run " + p("run") + " --num 1 --class 10 --out " + p("none"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--class 10 is outside [0, 10)"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

}  // namespace
