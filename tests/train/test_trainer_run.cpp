// The trainer in this process, as `difftrain train` runs it on one rank: exact resume, checkpoints
// under signals and corruption, class conditioning, bad steps, the run directory's files, held-out
// bits/dim, and the config checks that need data.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sys/resource.h>
#include <chrono>
#include <cmath>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "common/process.hpp"
#include "diffusion/bound.hpp"
#include "train/denoiser.hpp"
#include "train/heldout_bpd.hpp"
#include "train/sample_grid.hpp"
#include "train/step_rng.hpp"
#include "trainer_fixture.hpp"

namespace fs = std::filesystem;
namespace tr = difftrain::train;
using difftrain::testing::checkpoint_tensors;
using difftrain::testing::resume_auto;
using difftrain::testing::TempDir;
using difftrain::testing::with_fault;

namespace {

using TrainerRun = difftrain::testing::TrainerFixture;

// Trains run `name` 6 steps straight, and run `name`_resumed 3 steps and then 3 more with
// --resume auto: every tensor of the two final checkpoints is bit-identical. Returns the
// straight run's.
std::map<std::string, at::Tensor> expect_exact_resume(TrainerRun& f, const std::string& name,
                                                      const std::vector<std::string>& overrides) {
  const tr::Config c = f.config(name, overrides);
  const auto straight = f.train(c);
  EXPECT_EQ(straight.step, 6);
  auto half = overrides;
  half.push_back("training.max_steps=3");
  EXPECT_EQ(f.train(f.config(name + "_resumed", half)).step, 3);
  const auto resumed = f.train(f.config(name + "_resumed", overrides), resume_auto());
  EXPECT_EQ(resumed.step, 6);
  const auto a = checkpoint_tensors(c, straight.last_checkpoint);
  const auto b = checkpoint_tensors(c, resumed.last_checkpoint);
  EXPECT_EQ(a.size(), b.size());
  for (const auto& [key, t] : a)
    EXPECT_TRUE(b.count(key) && at::equal(t, b.at(key))) << key;
  return a;
}

TEST_F(TrainerRun, ExactResumeIsBitIdentical) {
  expect_exact_resume(*this, "straight", {});
}

// model.use_checkpoint recomputes the blocks' activations in backward, with the forward's dropout
// masks and autocast: a run trains as without it, to rounding (the gradients of tensors used
// several times are summed in another order). fp32 element by element, bf16 as a whole (the
// tolerances of W ranks against 1); a recomputation with fresh dropout masks is far outside both.
TEST_F(TrainerRun, GradientCheckpointingTrainsAsWithout) {
  for (const std::string precision : {"fp32", "bf16"}) {
    SCOPED_TRACE(precision);
    const std::vector<std::string> plain{"training.max_steps=3", "model.dropout=0.3",
                                         "training.precision=" + precision};
    auto checkpointed = plain;
    checkpointed.push_back("model.use_checkpoint=true");
    const auto a = train(config("plain_" + precision, plain));
    const auto b = train(config("checkpointed_" + precision, checkpointed));
    const tr::Config c = config("plain_" + precision, plain);
    const double difference =
        difftrain::testing::relative_update_difference(c, a.last_checkpoint, b.last_checkpoint);
    std::cout << precision << ": relative update difference " << difference << "\n";
    EXPECT_LT(difference, 0.05);
    if (precision == "fp32")
      difftrain::testing::expect_same_model(c, a.last_checkpoint, b.last_checkpoint, false);
  }
}

// model.fused_group_norm (on the CPU, its ATen-ops path) trains as the default. fp32: relative
// update difference below 0.01 (a wrong update of every weight gives about 1.4) but not 0, which
// shows that the setting reached the network's norms; not elementwise, as at lr 1e-3 Adam turns
// the rounding noise of gradients that are zero in exact arithmetic into whole steps of either
// sign. bf16 (channels-last, as auto makes it): bf16 itself takes a run about 0.37 away from fp32;
// the fused run differs from the default by under a third of that (one rounding in place of
// four), and is no farther from fp32 than the default (within 5 %).
TEST_F(TrainerRun, FusedGroupNormTrainsAsWithout) {
  const auto run = [&](const std::string& precision, bool fused) {
    std::vector<std::string> overrides{"training.max_steps=3", "training.precision=" + precision};
    if (fused) overrides.push_back("model.fused_group_norm=true");
    return train(config((fused ? "fused_" : "plain_") + precision, overrides)).last_checkpoint;
  };
  const tr::Config c = config("plain_fp32", {"training.max_steps=3"});
  const auto apart = [&](const std::string& a, const std::string& b) {
    return difftrain::testing::relative_update_difference(c, a, b);
  };
  const std::string fp32 = run("fp32", false), fp32_fused = run("fp32", true);
  const std::string bf16 = run("bf16", false), bf16_fused = run("bf16", true);
  const double fused_fp32 = apart(fp32, fp32_fused), fused_bf16 = apart(bf16, bf16_fused);
  const double bf16_from_fp32 = apart(fp32, bf16), fused_bf16_from_fp32 = apart(fp32, bf16_fused);
  std::cout << "relative update difference, fused against default: fp32 " << fused_fp32 << ", bf16 "
            << fused_bf16 << "; from fp32: bf16 " << bf16_from_fp32 << ", bf16 fused "
            << fused_bf16_from_fp32 << "\n";
  EXPECT_LT(fused_fp32, 0.01);
  EXPECT_GT(fused_fp32, 0.0);
  EXPECT_LT(fused_bf16, bf16_from_fp32 / 3);
  EXPECT_LT(fused_bf16_from_fp32, 1.05 * bf16_from_fp32);
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// logging.sample_every: grids of the EMA weights at steps 3 and 6, the very images `difftrain
// sample` draws from those steps' checkpoints with the grid's options (so they come from the
// first EMA, the config's seed and classes in turn), cropped from the padded 16x16 back to 14x14;
// and a run with grids trains bit for bit as one without.
TEST_F(TrainerRun, SampleGridsAreWhatSampleDrawsAndLeaveTrainingAlone) {
  const std::vector<std::string> grids{"data.class_conditional=true", "logging.sample_every=3",
                                       "logging.sample_num=5", "logging.sample_steps=4"};
  const auto with = train(config("grids", grids));
  const auto without = train(config("plain", {"data.class_conditional=true"}));
  ASSERT_EQ(with.step, 6);
  const auto a = checkpoint_tensors(config("grids", grids), with.last_checkpoint);
  const auto b = checkpoint_tensors(config("grids", grids), without.last_checkpoint);
  for (const auto& [key, t] : a)
    EXPECT_TRUE(at::equal(t, b.at(key))) << key;

  for (const int64_t step : {3, 6}) {
    const std::string grid = tr::sample_grid_path(dir / "grids", step);
    ASSERT_TRUE(fs::exists(grid)) << grid;
    EXPECT_FALSE(fs::exists(grid + ".tmp"));
    const std::string out = dir / ("sampled_" + std::to_string(step));
    const auto r = difftrain::testing::run_command(
        std::string(DIFFTRAIN_BINARY) + " sample --checkpoint " +
        tr::checkpoint_path(dir / "grids", step) +
        " --num 5 --sampler dpm++2m --steps 4 --seed 3 --out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(file_bytes(grid), file_bytes(out + ".png")) << "step " << step;
  }
  std::ifstream metrics(dir / "grids/metrics.jsonl");
  int grid_lines = 0;
  for (std::string line; std::getline(metrics, line);)
    grid_lines += nlohmann::json::parse(line).contains("sample_grid");
  EXPECT_EQ(grid_lines, 2);
}

// An upsampler (model.low_res_size) trains on its images' area-downsampled copies, which are a
// function of the batch: a resumed run is bit-identical; its held-out bits/dim and sample grids
// (from held-out images) run; sizes it cannot have are config errors naming the key.
TEST_F(TrainerRun, AnUpsamplerTrainsResumesExactlyAndDrawsItsGrid) {
  const std::vector<std::string> up{"data.pad_to=0",          "model.attention_resolutions=[7]",
                                    "model.low_res_size=7",   "data.validation=" + manifest,
                                    "logging.bpd_every=3",    "logging.bpd_batch=8",
                                    "logging.sample_every=6", "logging.sample_num=4",
                                    "logging.sample_steps=2"};
  const auto a = expect_exact_resume(*this, "straight", up);
  EXPECT_EQ(a.at("model/input_blocks.0.0.weight").size(1), 2) << "x_t and the low-res image";
  EXPECT_TRUE(fs::exists(tr::sample_grid_path(dir / "straight", 6)));
  std::ifstream metrics(dir / "straight/metrics.jsonl");
  int bpd_lines = 0;
  for (std::string line; std::getline(metrics, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("bpd_estimate")) {
      ++bpd_lines;
      EXPECT_TRUE(std::isfinite(j["bpd_estimate"].get<double>())) << line;
    }
  }
  EXPECT_EQ(bpd_lines, 3);  // steps 0, 3 and 6

  for (const auto& [overrides, expected] :
       std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"data.pad_to=0", "model.attention_resolutions=[7]", "model.low_res_size=14"},
            "config key 'model.low_res_size' = 14"},
           {{"model.low_res_size=8"}, "config key 'model.low_res_size' = 8 with data.pad_to"},
           {{"model.low_res_size=-1"}, "config key 'model.low_res_size'"}}) {
    try {
      train(config("bad", overrides));
      FAIL() << "no error for " << expected;
    } catch (const tr::ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
}

TEST_F(TrainerRun, CorruptLatestCheckpointFallsBackToThePrevious) {
  const auto r = train(config("run"));
  const auto all = tr::list_checkpoints(dir / "run");
  ASSERT_EQ(all.size(), 2u);  // steps 6 and 3
  fs::resize_file(all[0], fs::file_size(all[0]) - 100);
  EXPECT_NE(tr::checkpoint_problem(all[0]), "");
  EXPECT_EQ(tr::latest_valid_checkpoint(dir / "run"), all[1]);
  const auto resumed = train(config("run", {"training.max_steps=7"}), resume_auto());
  EXPECT_EQ(resumed.step, 7);
  EXPECT_TRUE(tr::checkpoint_problem(resumed.last_checkpoint).empty());
}

// The checkpoints in run_dir that are not this run's (a newer one --resume auto skipped as
// invalid, another run's, the steps a resume from an earlier checkpoint trains again) are moved
// aside at the start, never deleted; the run's own are never pruned for them, and --resume auto
// and `sample --run` then find this run's newest.
TEST_F(TrainerRun, CheckpointsThatAreNotThisRunsAreSetAsideNeverDeleted) {
  const fs::path run = dir / "run", checkpoints = run / "checkpoints";
  train(config("run"));  // checkpoints at steps 3 and 6
  // A damaged newer file: --resume auto skips it and continues from step 6.
  const std::string damaged = tr::checkpoint_path(run, 100);
  fs::copy_file(tr::checkpoint_path(run, 6), damaged);
  fs::resize_file(damaged, fs::file_size(damaged) / 2);
  const auto resumed =
      train(config("run", {"training.max_steps=9", "training.keep_checkpoints=1"}), resume_auto());
  EXPECT_EQ(resumed.step, 9);
  EXPECT_EQ(tr::list_checkpoints(run), std::vector<std::string>{tr::checkpoint_path(run, 9)});
  EXPECT_TRUE(tr::checkpoint_problem(resumed.last_checkpoint).empty());
  EXPECT_TRUE(fs::exists(checkpoints / "superseded_at_step_6" / "ckpt_000000100.pt"));

  // Resuming from an earlier checkpoint on purpose: the later one is set aside, with the
  // snapshots.
  train(config("run", {"training.max_steps=12", "training.keep_checkpoints=5"}), resume_auto());
  tr::TrainOptions from_9;
  from_9.resume = tr::checkpoint_path(run, 9);
  const auto again = train(config("run", {"training.max_steps=10"}), from_9);
  EXPECT_EQ(tr::list_checkpoints(run),
            (std::vector<std::string>{tr::checkpoint_path(run, 10), tr::checkpoint_path(run, 9)}));
  EXPECT_TRUE(fs::exists(checkpoints / "superseded_at_step_9" / "ckpt_000000012.pt"));
  EXPECT_EQ(again.last_checkpoint, tr::checkpoint_path(run, 10));

  // A fresh start in a used run_dir: the old run's checkpoints go aside as a whole.
  train(config("run", {"training.max_steps=3"}));
  EXPECT_EQ(tr::list_checkpoints(run), std::vector<std::string>{tr::checkpoint_path(run, 3)});
  EXPECT_TRUE(fs::exists(checkpoints / "superseded_at_step_0" / "ckpt_000000010.pt"));
  EXPECT_TRUE(fs::exists(checkpoints / "superseded_at_step_0" / "ckpt_000000009.pt"));
}

// A run directory that is a file, and a directory given to --resume, are errors that say so.
TEST_F(TrainerRun, PathsOfTheWrongKindAreNamed) {
  std::ofstream(dir / "a_file") << "x";
  try {
    train(config("a_file"));
    ADD_FAILURE() << "no error";
  } catch (const tr::ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "config key 'logging.run_dir' = '" + (dir / "a_file") + "': a file, not a directory");
  }
  tr::TrainOptions from_dir;
  from_dir.resume = dir / "data";
  try {
    train(config("run"), from_dir);
    ADD_FAILURE() << "no error";
  } catch (const tr::CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("--resume " + (dir / "data") +
                                         ": a directory; give a "
                                         "checkpoint file"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(TrainerRun, StopSignalLeavesAValidCheckpoint) {
  const auto c = config("signal", {"training.max_steps=100000", "logging.log_every=1"});
  std::thread killer([&] {
    const fs::path metrics = fs::path(dir / "signal") / "metrics.jsonl";
    for (int i = 0; i < 600 && (!fs::exists(metrics) || fs::file_size(metrics) == 0); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::raise(SIGTERM);
  });
  const auto r = train(c);
  killer.join();
  EXPECT_TRUE(r.interrupted);
  EXPECT_GT(r.step, 0);
  EXPECT_LT(r.step, 100000);
  EXPECT_TRUE(tr::checkpoint_problem(r.last_checkpoint).empty());
  EXPECT_EQ(tr::read_checkpoint_info(r.last_checkpoint).step, r.step);
}

TEST_F(TrainerRun, ClassConditionalModelLearnsItsLabelEmbedding) {
  const auto c = config("cond", {"data.class_conditional=true", "training.max_steps=3"});
  const auto r = train(c);
  const auto t = checkpoint_tensors(c, r.last_checkpoint);
  ASSERT_TRUE(t.count("model/label_emb.weight"));
  torch::manual_seed(c.seed);  // the initial weights, as the trainer draws them
  const auto manifest = difftrain::data::read_manifest(c.data.train);
  difftrain::model::UNet init(tr::unet_config(c, tr::data_shape(c, &manifest)));
  EXPECT_FALSE(
      at::equal(t.at("model/label_emb.weight"), init->named_parameters()["label_emb.weight"]));
}

// Classifier-free guidance: the null label has its own row of the label embedding, trained by
// the samples whose label was dropped (a row no sample uses keeps its initial value under Adam);
// the drops are keyed by step, so a resumed run is bit-identical; resuming across p_uncond = 0
// and > 0, which changes the model, is refused naming the key.
TEST_F(TrainerRun, ClassifierFreeGuidanceTrainsTheNullLabelAndResumesExactly) {
  const std::vector<std::string> cfg{"data.class_conditional=true", "training.p_uncond=0.3"};
  const auto c = config("cfg", cfg);
  const auto a = expect_exact_resume(*this, "cfg", cfg);
  const at::Tensor label_emb = a.at("model/label_emb.weight");
  ASSERT_EQ(label_emb.size(0), 11) << "10 classes and the null label";
  torch::manual_seed(c.seed);  // the initial weights, as the trainer draws them
  const auto manifest = difftrain::data::read_manifest(c.data.train);
  difftrain::model::UNet init(tr::unet_config(c, tr::data_shape(c, &manifest)));
  const at::Tensor initial = init->named_parameters()["label_emb.weight"];
  EXPECT_FALSE(at::equal(label_emb[10], initial[10])) << "the null label was trained";

  try {
    train(config("cfg_resumed", {"data.class_conditional=true", "training.max_steps=8"}),
          resume_auto());
    FAIL() << "resumed a p_uncond = 0.3 checkpoint without the null label";
  } catch (const tr::ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("was trained with training.p_uncond = 0.3; with 0 the model would lose"),
              std::string::npos)
        << what;
  }
}

// A noise-conditioned upsampler's levels and noise are keyed by step: a resumed run is
// bit-identical, its level embedding trained; resuming without model.low_res_noise, which would
// drop the embedding, is refused naming the key.
TEST_F(TrainerRun, ANoiseConditionedUpsamplerResumesExactly) {
  const std::vector<std::string> up{"data.pad_to=0", "model.attention_resolutions=[7]",
                                    "model.low_res_size=7", "model.low_res_noise=true",
                                    "training.low_res_noise_max=0.5"};
  const auto c = config("noised", up);
  const auto a = expect_exact_resume(*this, "noised", up);
  torch::manual_seed(c.seed);  // the initial weights, as the trainer draws them
  const auto manifest = difftrain::data::read_manifest(c.data.train);
  difftrain::model::UNet init(tr::unet_config(c, tr::data_shape(c, &manifest)));
  EXPECT_FALSE(at::equal(a.at("model/low_res_noise_embed.0.weight"),
                         init->named_parameters()["low_res_noise_embed.0.weight"]))
      << "the level's embedding was trained";

  try {
    train(config("noised_resumed", {"data.pad_to=0", "model.attention_resolutions=[7]",
                                    "model.low_res_size=7", "training.max_steps=8"}),
          resume_auto());
    FAIL() << "resumed a noise-conditioned upsampler without its level embedding";
  } catch (const tr::ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("was trained with model.low_res_noise = true: the model would lose"),
              std::string::npos)
        << what;
  }
}

TEST_F(TrainerRun, NonFiniteLossSkipsTheStepThenStops) {
  // One bad step is skipped and training goes on.
  const auto r = train(config("nan"), with_fault("nan@2"));
  EXPECT_EQ(r.step, 6);
  // The skip is decided on the device; the log line covering step 2 counts it.
  int64_t skipped = 0, logged_steps = 0;
  std::ifstream metrics(dir / "nan/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);)
    if (auto j = nlohmann::json::parse(line); j.contains("skipped_steps")) {
      skipped += j["skipped_steps"].get<int64_t>();
      logged_steps += j["step"].get<int64_t>() > 0;
    }
  EXPECT_EQ(skipped, 1);
  EXPECT_EQ(logged_steps, 3);  // log_every 2 over 6 steps
  // With max_bad_steps = 1 the first bad step stops training with an error.
  try {
    train(config("nan_stop", {"training.max_bad_steps=1"}), with_fault("nan@1"));
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
}

TEST_F(TrainerRun, WritesResolvedConfigAndMetrics) {
  const auto r = train(config("files"));
  const auto resolved = tr::parse_config(difftrain::testing::read_text(dir / "files/config.yaml"));
  EXPECT_EQ(resolved.training.max_steps, 6);
  // Resolved: the shape the data gave the model is filled in.
  EXPECT_EQ(resolved.model.image_size, 16);
  EXPECT_EQ(resolved.model.in_channels, 1);
  auto as_given = resolved;
  as_given.model.image_size = as_given.model.in_channels = 0;
  EXPECT_EQ(tr::to_yaml(as_given), tr::to_yaml(config("files")));
  std::ifstream metrics(dir / "files/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) {
    ++lines;
    EXPECT_NE(line.find("\"loss\""), std::string::npos);
    EXPECT_NE(line.find("\"images_per_s\""), std::string::npos);
  }
  EXPECT_EQ(lines, 3);  // steps 2, 4, 6
  EXPECT_TRUE(fs::exists(dir / "files/timestep_metrics.jsonl"));
}

// With logging.bpd_timesteps = T the stratified estimate evaluates every timestep once: the logged
// value at step 0 must then be the full bound of the initial model on the fixed held-out batch.
TEST_F(TrainerRun, LogsHeldOutBitsPerDimThatIsTheFullBoundWhenEveryTimestepIsUsed) {
  const auto c = config("bpd", {"data.validation=" + manifest, "logging.bpd_every=3",
                                "logging.bpd_batch=6", "logging.bpd_timesteps=50"});
  train(c);
  std::vector<nlohmann::json> records;
  std::ifstream metrics(dir / "bpd/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);)
    if (auto j = nlohmann::json::parse(line); j.contains("bpd_estimate")) records.push_back(j);
  ASSERT_EQ(records.size(), 3u) << "steps 0, 3, 6";
  for (std::size_t i = 0; i < records.size(); ++i) {
    EXPECT_EQ(records[i]["step"], 3 * static_cast<int64_t>(i));
    EXPECT_EQ(records[i]["bpd_images"], 6);
    EXPECT_GT(records[i]["bpd_standard_error"].get<double>(), 0);
  }

  const auto data = difftrain::data::read_manifest(c.data.train);
  const auto shape = tr::data_shape(c, &data);
  torch::manual_seed(c.seed);  // the trainer's initial weights
  difftrain::model::UNet net(tr::unet_config(c, shape));
  net->eval();
  torch::NoGradGuard no_grad;
  const auto batch = tr::read_heldout_batch(c, shape, 0, 1, at::kCPU);
  const auto d = tr::make_diffusion(c);
  const auto model = tr::make_denoiser(net, c).with_labels({});
  const auto noise = [&](long t) {
    return at::randn(batch.images.sizes(),
                     tr::cpu_generator(tr::step_seed(c.seed, t, tr::RngStream::evaluation, 1)));
  };
  const double full = difftrain::diffusion::calc_bpd_loop(d, model, batch.images, true, noise)
                          .total_bpd.mean()
                          .item<double>();
  EXPECT_NEAR(records[0]["bpd_estimate"].get<double>(), full, 1e-5 * full);
  EXPECT_GT(full, 1.0);
}

TEST_F(TrainerRun, HeldOutBatchOfAnotherShapeIsAConfigError) {
  const std::string other =
      difftrain::testing::write_synthetic_set(dir / "rgb", {8}, 14, 14, 3, 10).manifest;
  const auto c =
      config("shape", {"data.validation=" + other, "logging.bpd_every=3", "logging.bpd_batch=4"});
  try {
    train(c);
    FAIL() << "expected a ConfigError";
  } catch (const tr::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("data.validation"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("3-channel"), std::string::npos) << e.what();
  }
}

// A checkpoint continues only the objective it was trained for: another schedule or T is an
// error naming the keys, unless --allow-objective-change says it is on purpose.
TEST_F(TrainerRun, ResumingWithAnotherObjectiveIsRefusedUnlessAllowed) {
  train(config("objective", {"training.max_steps=3"}));
  const auto other = config("objective", {"diffusion.schedule=linear", "diffusion.steps=100",
                                          "logging.timestep_buckets=5"});
  try {
    train(other, resume_auto());
    FAIL() << "resumed a cosine T=50 checkpoint as linear T=100";
  } catch (const tr::ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("diffusion.schedule: cosine -> linear"), std::string::npos) << what;
    EXPECT_NE(what.find("diffusion.steps: 50 -> 100"), std::string::npos) << what;
    EXPECT_NE(what.find("--allow-objective-change"), std::string::npos) << what;
  }
  tr::TrainOptions allowed = resume_auto();
  allowed.allow_objective_change = true;
  EXPECT_EQ(train(other, allowed).step, 6);
  // Changing what is not the objective (the learning rate) needs no flag.
  EXPECT_EQ(train(config("objective", {"diffusion.schedule=linear", "diffusion.steps=100",
                                       "training.lr=0.0005", "training.max_steps=8"}),
                  resume_auto())
                .step,
            8);
}

// Every path in the config is checked at start, also data.validation when nothing reads it yet.
TEST_F(TrainerRun, MissingValidationSetIsAnErrorAtStart) {
  try {
    train(config("paths", {"data.validation=" + (dir / "no/such/manifest.json")}));
    FAIL() << "no error";
  } catch (const tr::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("config key 'data.validation'"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir / "paths/checkpoints"));
}

// A write that fails (here: the file size limit, as a full disk) reports the file, removes the
// temporary file and leaves the previous checkpoint as it was.
TEST_F(TrainerRun, FailedCheckpointWriteRemovesItsTemporaryFileAndKeepsThePrevious) {
  const auto c = config("full", {"training.max_steps=3"});
  const auto r = train(c);
  const std::string previous = r.last_checkpoint;
  const auto bytes = fs::file_size(previous);
  const auto manifest = difftrain::data::read_manifest(c.data.train);
  auto comm = difftrain::parallel::make_local_communicator();
  tr::TrainState state = tr::make_train_state(c, tr::data_shape(c, &manifest), at::kCPU, *comm);
  tr::load_checkpoint(previous, state);
  const std::string next = tr::checkpoint_path(dir / "full", 4);

  struct rlimit old {};
  getrlimit(RLIMIT_FSIZE, &old);
  struct rlimit small = old;
  small.rlim_cur = 4096;
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // a failed write, not a dead process
  setrlimit(RLIMIT_FSIZE, &small);
  std::string what;
  try {
    tr::save_checkpoint(next, state, "{}");
  } catch (const tr::CheckpointError& e) {
    what = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(what.find(next + ".tmp: cannot write checkpoint"), std::string::npos) << what;
  EXPECT_FALSE(fs::exists(next + ".tmp"));
  EXPECT_FALSE(fs::exists(next));
  EXPECT_EQ(fs::file_size(previous), bytes);
  EXPECT_TRUE(tr::checkpoint_problem(previous).empty());
  EXPECT_EQ(tr::latest_valid_checkpoint(dir / "full"), previous);
}

// The whole path as a user runs it, on a tiny UNet and 16x16 images: train v-prediction with a
// zero terminal SNR, Min-SNR weighting and stratified logit-normal timesteps; the per-timestep
// statistics show mse, weighted mse and vb; sample and eval give finite results.
TEST(ObjectiveRun, TrainSampleAndEvalWithVPredictionAndZeroTerminalSnr) {
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
