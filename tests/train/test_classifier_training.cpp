// `difftrain train-classifier` in this process: the noisy classifier learns labels its images
// show (at little noise, not at full noise), resumes bit-identically, logs what it is scored on,
// refuses configs it cannot train, and its checkpoints are never taken for a diffusion model's.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/manifest.hpp"
#include "data/test_files.hpp"
#include "parallel/communicator.hpp"
#include "train/checkpoint.hpp"
#include "train/classifier.hpp"
#include "train/classifier_trainer.hpp"
#include "train/config.hpp"
#include "trainer_fixture.hpp"

namespace fs = std::filesystem;
namespace tr = difftrain::train;
using difftrain::testing::classifier_checkpoint;
using difftrain::testing::tiny_classifier_config;

namespace {

// The trainer fixture's data set, with a classifier's config and loop in place of the model's.
struct ClassifierTraining : difftrain::testing::TrainerFixture {
  tr::Config config(const std::string& run, const std::vector<std::string>& overrides = {}) {
    return tr::parse_config(tiny_classifier_config(manifest, manifest, dir / run), overrides);
  }
  tr::TrainResult train(const tr::Config& c, const std::string& resume = "") {
    auto comm = difftrain::parallel::make_local_communicator();
    tr::Cluster cluster{*comm, nullptr, {}};
    return tr::train_classifier(c, cluster, resume);
  }
};

std::vector<nlohmann::json> metrics_lines(const fs::path& run_dir) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    lines.push_back(nlohmann::json::parse(line));
  return lines;
}

TEST_F(ClassifierTraining, LearnsLabelsTheImagesShowWhereTheNoiseLeavesThemVisible) {
  // Two classes, dark and bright images with a texture: x_0 gives the label away, x_T nothing.
  const auto shows_label = [](int64_t i, int64_t y, int64_t x, int64_t) {
    return static_cast<uint8_t>((i % 2 ? 170 : 60) + (i * 7 + y * 3 + x * 5) % 25);
  };
  const std::string shards =
      difftrain::testing::write_synthetic_set(dir / "shows", {64, 64}, 16, 16, 1, 2, shows_label)
          .manifest;
  const std::string held_out =
      difftrain::testing::write_synthetic_set(dir / "shows_test", {64}, 16, 16, 1, 2, shows_label)
          .manifest;
  const tr::Config c =
      tr::parse_config(tiny_classifier_config(shards, held_out, dir / "learns"),
                       {"training.max_steps=60", "training.batch_size=16", "logging.bpd_every=60",
                        "logging.bpd_batch=64", "training.checkpoint_every=60"});
  train(c);
  const auto lines = metrics_lines(dir / "learns");
  nlohmann::json before, after;
  for (const auto& l : lines)
    if (l.contains("heldout_accuracy")) (l["step"] == 0 ? before : after) = l;
  ASSERT_FALSE(after.is_null());
  // Untrained: chance. Trained: the least noisy quarter of t is read right, the noisiest (the
  // cosine schedule's abar < 0.15 there) is close to chance.
  EXPECT_NEAR(before["heldout_accuracy"].get<double>(), 0.5, 0.2) << before;
  EXPECT_GE(after["heldout_accuracy_q0"].get<double>(), 0.95) << after;
  EXPECT_LT(after["heldout_accuracy_q3"].get<double>(), after["heldout_accuracy_q0"].get<double>())
      << after;
  EXPECT_LT(after["heldout_loss"].get<double>(), before["heldout_loss"].get<double>());
}

TEST_F(ClassifierTraining, ResumesBitIdentically) {
  const tr::Config straight = config("straight");
  const tr::TrainResult r = train(straight);
  ASSERT_EQ(r.step, 6);
  const tr::Config halves = config("halves", {"training.max_steps=3"});
  train(halves);
  const tr::Config rest = config("halves");
  const tr::TrainResult resumed = train(rest, "auto");
  ASSERT_EQ(resumed.step, 6);
  const auto a = classifier_checkpoint(straight, r.last_checkpoint);
  const auto b = classifier_checkpoint(straight, resumed.last_checkpoint);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [key, t] : a)
    EXPECT_TRUE(at::equal(t, b.at(key))) << key;
}

TEST_F(ClassifierTraining, LogsLossAndAccuracyByQuarterOfTheTimestepsAndHeldOut) {
  train(config("logs"));
  const auto lines = metrics_lines(dir / "logs");
  int train_lines = 0, heldout_lines = 0;
  for (const auto& l : lines) {
    if (l.contains("loss")) {
      ++train_lines;
      for (const char* key :
           {"accuracy", "accuracy_q0", "accuracy_q3", "grad_norm", "lr", "images_per_s",
            "step_time_ms", "data_wait_ms", "data_wait_max_ms", "data_wait_slowest_rank"})
        EXPECT_TRUE(l.contains(key)) << key << " missing: " << l;
      // One rank: the mean is the maximum, and it is part of the step.
      EXPECT_EQ(l["data_wait_ms"], l["data_wait_max_ms"]) << l;
      EXPECT_EQ(l["data_wait_slowest_rank"], 0) << l;
      EXPECT_GE(l["data_wait_ms"].get<double>(), 0.0) << l;
      EXPECT_LT(l["data_wait_ms"].get<double>(), l["step_time_ms"].get<double>()) << l;
      EXPECT_TRUE(std::isfinite(l["loss"].get<double>())) << l;
      EXPECT_GE(l["accuracy"].get<double>(), 0.0);
      EXPECT_LE(l["accuracy"].get<double>(), 1.0);
    }
    if (l.contains("heldout_accuracy")) ++heldout_lines;
  }
  EXPECT_EQ(train_lines, 3);    // steps 2, 4, 6
  EXPECT_EQ(heldout_lines, 3);  // steps 0, 3, 6
  // A last held-out line where the final step is not a multiple of logging.bpd_every.
  train(config("logs_end", {"training.max_steps=5"}));
  int last_heldout_step = -1;
  for (const auto& l : metrics_lines(dir / "logs_end"))
    if (l.contains("heldout_accuracy")) last_heldout_step = l["step"].get<int>();
  EXPECT_EQ(last_heldout_step, 5);
  EXPECT_TRUE(fs::exists(dir / "logs/config.yaml"));
}

TEST_F(ClassifierTraining, Bf16StepsAreFinite) {
  const tr::TrainResult r = train(config("bf16", {"training.precision=bf16"}));
  const auto lines = metrics_lines(dir / "bf16");
  for (const auto& l : lines)
    if (l.contains("loss")) {
      EXPECT_TRUE(std::isfinite(l["loss"].get<double>())) << l;
    }
  const auto w = classifier_checkpoint(config("bf16"), r.last_checkpoint);
  for (const auto& [key, t] : w)
    EXPECT_TRUE(at::isfinite(t).all().item<bool>()) << key;
}

TEST_F(ClassifierTraining, ConfigsItCannotTrainAreRefusedNamingTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"data.class_conditional=false", "data.class_conditional"},
      {"training.precision=fp16", "training.precision"},
      {"diffusion.timestep_sampler=loss-second-moment", "diffusion.timestep_sampler"},
      {"model.pool=spatial", "model.pool"}};
  for (const auto& [override_, key] : cases) {
    try {
      train(config("refused", {override_}));
      ADD_FAILURE() << override_ << ": no error";
    } catch (const tr::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(fs::exists(dir / "refused/checkpoints"));
}

TEST_F(ClassifierTraining, ItsCheckpointsAreNotTakenForADiffusionModelsOrTheOtherWayRound) {
  const tr::TrainResult r = train(config("kind"));
  EXPECT_EQ(tr::read_checkpoint_info(r.last_checkpoint).kind, "classifier");
  // A diffusion run resuming from it.
  const tr::Config diffusion =
      tr::parse_config(difftrain::testing::tiny_config(manifest, dir / "kind"), {});
  auto comm = difftrain::parallel::make_local_communicator();
  tr::Cluster cluster{*comm, nullptr, {}};
  try {
    tr::train(diffusion, cluster, difftrain::testing::resume_auto());
    ADD_FAILURE() << "no error";
  } catch (const tr::CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("noisy classifier"), std::string::npos) << e.what();
  }
  // A classifier resuming from a diffusion model's checkpoint.
  const tr::TrainResult model = tr::train(
      tr::parse_config(difftrain::testing::tiny_config(manifest, dir / "model"), {}), cluster, {});
  try {
    train(config("kind"), model.last_checkpoint);
    ADD_FAILURE() << "no error";
  } catch (const tr::CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("diffusion model's checkpoint"), std::string::npos)
        << e.what();
  }
}

}  // namespace
