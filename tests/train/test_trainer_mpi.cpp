// Training under mpirun, as users launch it: W ranks end with the weights of 1 rank (fp32,
// channels-last, bf16, microbatches, importance sampling, classifier-free guidance, two "nodes"
// over TCP); a killed, hung or signalled rank ends the job cleanly and the run resumes; the launch
// scripts (Slurm, scaling).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "train/classifier_trainer.hpp"
#include "trainer_fixture.hpp"

namespace fs = std::filesystem;
namespace tr = difftrain::train;
using difftrain::testing::checkpoint_tensors;
using difftrain::testing::expect_same_model;
using difftrain::testing::relative_update_difference;
using difftrain::testing::resume_auto;
using difftrain::testing::tiny_config;

namespace {

struct MultiRankTraining : difftrain::testing::TrainerFixture {};
struct LaunchScripts : difftrain::testing::TrainerFixture {};

// `mpirun -np ranks difftrain train` of the fixture's config in run directory f.dir / run.
difftrain::testing::RunResult mpi_train(difftrain::testing::TrainerFixture& f, int ranks,
                                        const std::string& run,
                                        const std::vector<std::string>& overrides,
                                        const std::string& args = "") {
  const std::string yaml = f.dir / (run + ".yaml");
  std::ofstream(yaml) << tiny_config(f.manifest, f.dir / run);
  std::string cmd =
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
      "mpirun --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np " +
      std::to_string(ranks) + " " + DIFFTRAIN_BINARY + " train --config " + yaml + " " + args;
  for (const auto& o : overrides)
    cmd += " --set " + o;
  return difftrain::testing::run(cmd);
}

const std::vector<std::string> kMpiOverrides{"training.max_steps=5", "training.batch_size=12",
                                             "training.lr=0.0001"};

// fp32 runs match element by element (expect_same_model's tolerance). Under bf16 autocast the
// ranks' smaller per-rank batches round differently, and Adam turns some of those differences
// into up to lr per step, so bf16 runs are compared by how far their updates differ as a whole.
// ranks_only: overrides of the W-rank run alone.
void expect_ranks_match_one_rank(MultiRankTraining& f, int ranks,
                                 const std::vector<std::string>& extra, bool elementwise = true,
                                 const std::vector<std::string>& ranks_only = {}) {
  std::vector<std::string> overrides = kMpiOverrides;
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  const auto one = f.train(f.config("one_rank", overrides));
  const std::string run = "ranks" + std::to_string(ranks);
  auto rank_overrides = overrides;
  rank_overrides.insert(rank_overrides.end(), ranks_only.begin(), ranks_only.end());
  const auto r = mpi_train(f, ranks, run, rank_overrides);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const tr::Config c = f.config("one_rank", overrides);
  const std::string theirs = tr::checkpoint_path(f.dir / run, 5);
  const double difference = relative_update_difference(c, one.last_checkpoint, theirs);
  std::cout << "relative update difference, " << ranks << " ranks against 1: " << difference
            << "\n";
  EXPECT_LT(difference, 0.05);
  if (elementwise) expect_same_model(c, one.last_checkpoint, theirs, false);
}

TEST_F(MultiRankTraining, TwoRanksMatchOneRank) {
  expect_ranks_match_one_rank(*this, 2, {});
}
TEST_F(MultiRankTraining, ThreeRanksWithMicrobatchesMatchOneRank) {
  expect_ranks_match_one_rank(*this, 3, {"training.microbatch=2"});
}
TEST_F(MultiRankTraining, ImportanceSamplerRunsOnTwoRanksAsOnOne) {
  expect_ranks_match_one_rank(*this, 2, {"diffusion.timestep_sampler=loss-second-moment"});
}
// Channels-last weights get channels-last gradient buckets: with contiguous bucket views the
// fused AdamW applied each gradient element to another weight, about 2 x lr per step off.
TEST_F(MultiRankTraining, TwoRanksChannelsLastMatchOneRank) {
  expect_ranks_match_one_rank(*this, 2, {"model.channels_last=true"});
}
// bf16 autocast, channels-last by `auto`: the configuration multi-GPU users train in.
TEST_F(MultiRankTraining, TwoRanksBf16MatchOneRank) {
  expect_ranks_match_one_rank(*this, 2, {"training.precision=bf16"}, /*elementwise=*/false);
}

// An upsampler's condition is computed from each rank's own rows (their area-downsampled copies):
// 2 ranks train it as 1 rank does, in fp32 element by element and in bf16 as a whole.
const std::vector<std::string> kUpsampler{"data.pad_to=0", "model.attention_resolutions=[7]",
                                          "model.low_res_size=7"};
TEST_F(MultiRankTraining, TwoRanksTrainAnUpsamplerAsOneRank) {
  expect_ranks_match_one_rank(*this, 2, kUpsampler);
}
// Noise conditioning augmentation draws each row's level and noise from the row's own generator:
// 2 ranks train a noise-conditioned upsampler as 1 rank does.
TEST_F(MultiRankTraining, TwoRanksTrainANoiseConditionedUpsamplerAsOneRank) {
  auto noised = kUpsampler;
  noised.push_back("model.low_res_noise=true");
  expect_ranks_match_one_rank(*this, 2, noised);
}
TEST_F(MultiRankTraining, TwoRanksTrainAnUpsamplerAsOneRankInBf16) {
  auto bf16 = kUpsampler;
  bf16.push_back("training.precision=bf16");
  expect_ranks_match_one_rank(*this, 2, bf16, /*elementwise=*/false);
}
// The level and noise are drawn in fp32 on the host and q_sample runs outside autocast: in bf16
// too, 2 ranks train a noise-conditioned upsampler as 1 rank does.
TEST_F(MultiRankTraining, TwoRanksTrainANoiseConditionedUpsamplerAsOneRankInBf16) {
  auto bf16 = kUpsampler;
  bf16.push_back("model.low_res_noise=true");
  bf16.push_back("training.precision=bf16");
  expect_ranks_match_one_rank(*this, 2, bf16, /*elementwise=*/false);
}

// With gradient checkpointing, each block's parameter gradients reach the bucketed reducer at once,
// from the recomputation: 2 checkpointed ranks train as 1 rank without it.
TEST_F(MultiRankTraining, TwoRanksWithGradientCheckpointingMatchOneRankWithout) {
  expect_ranks_match_one_rank(*this, 2, {}, true, {"model.use_checkpoint=true"});
}
TEST_F(MultiRankTraining, TwoRanksWithGradientCheckpointingMatchOneRankWithoutInBf16) {
  expect_ranks_match_one_rank(*this, 2, {"training.precision=bf16"}, false,
                              {"model.use_checkpoint=true"});
}

// The noisy classifier's gradients are averaged over ranks as the diffusion model's: 2 ranks end
// with the weights of 1 rank, in fp32 element by element, in bf16 as a whole.
TEST_F(MultiRankTraining, TwoRanksTrainTheClassifierOneRankTrains) {
  for (const std::string precision : {"fp32", "bf16"}) {
    const std::vector<std::string> overrides{"training.max_steps=5", "training.batch_size=12",
                                             "training.lr=0.0001",
                                             "training.precision=" + precision};
    const auto config = [&](const std::string& run) {
      return tr::parse_config(
          difftrain::testing::tiny_classifier_config(manifest, manifest, dir / run), overrides);
    };
    auto comm = difftrain::parallel::make_local_communicator();
    tr::Cluster cluster{*comm, nullptr, {}};
    const auto one = tr::train_classifier(config("classifier_one_" + precision), cluster, "");
    const std::string run = "classifier_two_" + precision;
    const std::string yaml = dir / (run + ".yaml");
    std::ofstream(yaml) << difftrain::testing::tiny_classifier_config(manifest, manifest,
                                                                      dir / run);
    std::string cmd =
        "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
        "mpirun --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np 2 " +
        std::string(DIFFTRAIN_BINARY) + " train-classifier --config " + yaml;
    for (const auto& o : overrides)
      cmd += " --set " + o;
    const auto r = difftrain::testing::run(cmd);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto a = difftrain::testing::classifier_checkpoint(config(run), one.last_checkpoint);
    const auto b =
        difftrain::testing::classifier_checkpoint(config(run), tr::checkpoint_path(dir / run, 5));
    // How far the runs ended apart, relative to how far training moved the weights.
    const auto manifest_data = difftrain::data::read_manifest(manifest);
    const tr::ClassifierState initial = tr::make_classifier_state(
        config(run), tr::data_shape(config(run), &manifest_data), at::kCPU, *comm);
    double apart = 0, moved = 0;
    for (const auto& p : initial.net->named_parameters()) {
      const at::Tensor& t = a.at("model/" + p.key());
      apart += (t - b.at("model/" + p.key())).square().sum().item<double>();
      moved += (t - p.value()).square().sum().item<double>();
      if (precision == "fp32") {
        EXPECT_TRUE(at::allclose(t, b.at("model/" + p.key()), 1e-4, 1e-5)) << p.key();
      }
    }
    std::cout << "classifier, " << precision
              << ": relative update difference, 2 ranks against 1: " << std::sqrt(apart / moved)
              << "\n";
    EXPECT_LT(std::sqrt(apart / moved), 0.05) << precision;
    EXPECT_TRUE(at::equal(a.at("cursor"), b.at("cursor")));
  }
}

// Classifier-free guidance's label dropout is drawn over the global batch: 2 ranks drop the
// labels 1 rank drops, so the null label's row trains alike.
TEST_F(MultiRankTraining, TwoRanksWithClassifierFreeGuidanceMatchOneRank) {
  expect_ranks_match_one_rank(*this, 2, {"data.class_conditional=true", "training.p_uncond=0.5"});
}

// Failures under mpirun: the job ends non-zero well within the time a test allows (no rank waits
// forever), the last checkpoint is valid, and --resume auto continues from it.
struct Timed {
  difftrain::testing::RunResult result;
  double seconds;
};
Timed timed_mpi_train(difftrain::testing::TrainerFixture& f, int ranks, const std::string& run,
                      const std::vector<std::string>& overrides, const std::string& args) {
  const auto start = std::chrono::steady_clock::now();
  auto r = mpi_train(f, ranks, run, overrides, args);
  return {r, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()};
}

std::vector<std::string> failure_overrides() {
  auto o = kMpiOverrides;
  o.push_back("training.max_steps=6");
  o.push_back("training.watchdog_timeout=3");
  return o;
}

TEST_F(MultiRankTraining, KilledRankEndsTheJobAndTwoRanksResumeExactly) {
  const auto o = failure_overrides();
  ASSERT_EQ(mpi_train(*this, 2, "whole", o).exit_code, 0);
  const Timed killed = timed_mpi_train(*this, 2, "killed", o, "--fault kill@4 --fault-rank 1");
  EXPECT_NE(killed.result.exit_code, 0) << killed.result.output;
  EXPECT_LT(killed.seconds, 60) << killed.result.output;
  EXPECT_TRUE(killed.result.output.find("signal 9") != std::string::npos ||
              killed.result.output.find("Killed") != std::string::npos)
      << killed.result.output;
  EXPECT_EQ(tr::latest_valid_checkpoint(dir / "killed"), tr::checkpoint_path(dir / "killed", 3));

  const auto resumed = mpi_train(*this, 2, "killed", o, "--resume auto");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
  expect_same_model(config("whole", o), tr::checkpoint_path(dir / "whole", 6),
                    tr::checkpoint_path(dir / "killed", 6), /*bitwise=*/true);
}

TEST_F(MultiRankTraining, SignalOnOneRankStopsEveryRankAtTheNextLogStep) {
  // Rank 1 alone gets SIGTERM at step 3; the ranks agree at the next log step (log_every 2), so
  // both stop after step 4 with one checkpoint, and the job ends cleanly.
  auto o = kMpiOverrides;
  o.push_back("training.max_steps=100");
  const auto r = mpi_train(*this, 2, "term", o, "--fault term@3 --fault-rank 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("stop signal received at step 4"), std::string::npos) << r.output;
  EXPECT_EQ(tr::latest_valid_checkpoint(dir / "term"), tr::checkpoint_path(dir / "term", 4));
}

// launch/slurm.sbatch under a stand-in for Slurm that signals as Slurm does at the time limit
// (tests/train/slurm_standin.sh): the ranks write one checkpoint and the job exits 0; the next
// submission continues from it. The script's `B:` form signals only the batch shell, which never
// passes the signal on: that control run must end without a checkpoint.
TEST_F(LaunchScripts, SlurmPreemptionCheckpointsAndTheNextJobResumes) {
  const std::string standin = std::string(DIFFTRAIN_SOURCE_DIR) + "/tests/train/slurm_standin.sh";
  const std::string sbatch = std::string(DIFFTRAIN_SOURCE_DIR) + "/launch/slurm.sbatch";
  const std::string yaml = dir / "slurm.yaml";
  std::ofstream(yaml) << tiny_config(manifest, dir / "slurm");
  const auto submit = [&](const std::string& script, const std::string& run,
                          const std::string& wait_file, const std::string& max_steps) {
    return difftrain::testing::run("DIFFTRAIN_BIN=" + std::string(DIFFTRAIN_BINARY) + " " +
                                   standin + " " + script + " 2 " + wait_file + " -- " + yaml +
                                   " --set logging.run_dir=" + (dir / run) +
                                   " --set training.max_steps=" + max_steps +
                                   " --set training.batch_size=12 --set training.lr=0.0001"
                                   " --set training.checkpoint_every=100000");
  };

  const auto job = submit(sbatch, "slurm", dir / "slurm/metrics.jsonl", "100000");
  ASSERT_EQ(job.exit_code, 0) << job.output;
  EXPECT_NE(job.output.find("to the tasks"), std::string::npos) << job.output;
  EXPECT_NE(job.output.find("stop signal received at step"), std::string::npos) << job.output;
  const auto written = tr::list_checkpoints(dir / "slurm");
  ASSERT_EQ(written.size(), 1u) << job.output;
  const int64_t stopped = tr::read_checkpoint_info(written[0]).step;
  EXPECT_GT(stopped, 0);

  const auto next = submit(sbatch, "slurm", "-", std::to_string(stopped + 2));
  ASSERT_EQ(next.exit_code, 0) << next.output;
  EXPECT_NE(next.output.find("resumed from " + written[0]), std::string::npos) << next.output;
  EXPECT_EQ(tr::latest_valid_checkpoint(dir / "slurm"),
            tr::checkpoint_path(dir / "slurm", stopped + 2));

  std::string text;
  {
    std::ifstream in(sbatch);
    std::stringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  }
  const auto at = text.find("#SBATCH --signal=");
  ASSERT_NE(at, std::string::npos);
  text.insert(at + std::string("#SBATCH --signal=").size(), "B:");
  const std::string batch_only = dir / "batch_only.sbatch";
  std::ofstream(batch_only) << text;
  const auto control = submit(batch_only, "control", dir / "control/metrics.jsonl", "100000");
  EXPECT_NE(control.exit_code, 0) << control.output;
  EXPECT_NE(control.output.find("to the batch shell"), std::string::npos) << control.output;
  EXPECT_TRUE(tr::list_checkpoints(dir / "control").empty()) << control.output;
}

TEST_F(MultiRankTraining, HungRankIsNamedByTheWatchdogAndOneRankResumes) {
  const auto o = failure_overrides();
  const Timed hung = timed_mpi_train(*this, 2, "hung", o, "--fault hang@4 --fault-rank 1");
  EXPECT_NE(hung.result.exit_code, 0) << hung.result.output;
  EXPECT_LT(hung.seconds, 60) << hung.result.output;
  EXPECT_NE(hung.result.output.find("watchdog: all_reduce"), std::string::npos)
      << hung.result.output;
  EXPECT_NE(hung.result.output.find("at step 4 has not completed"), std::string::npos)
      << hung.result.output;

  // The 2-rank checkpoint of step 3 continues on 1 rank with the same global batches: the end
  // matches a 1-rank run throughout, within the tolerance of 2 ranks against 1.
  const auto resumed = train(config("hung", o), resume_auto());
  EXPECT_EQ(resumed.step, 6);
  const auto one = train(config("one", o));
  expect_same_model(config("one", o), one.last_checkpoint, resumed.last_checkpoint, false);
}

// With sample grids too: rank 0 puts the EMA into its network to draw them, while the others
// wait, and the check after the step shows that it put its own weights back.
TEST_F(MultiRankTraining, ReplicaCheckPassesWithImportanceSamplingAndCatchesADivergedRank) {
  auto o = kMpiOverrides;
  o.push_back("diffusion.timestep_sampler=loss-second-moment");
  o.push_back("training.check_replicas_every=1");
  for (const char* grid :
       {"logging.sample_every=2", "logging.sample_num=4", "logging.sample_steps=3"})
    o.push_back(grid);
  const auto same = mpi_train(*this, 2, "same", o);
  EXPECT_EQ(same.exit_code, 0) << same.output;
  EXPECT_TRUE(fs::exists(dir / "same/samples/step_000000002.png")) << same.output;
  const auto diverged = mpi_train(*this, 2, "diverged", o, "--fault diverge@2 --fault-rank 1");
  EXPECT_NE(diverged.exit_code, 0) << diverged.output;
  EXPECT_NE(diverged.output.find("replica check after step 3"), std::string::npos)
      << diverged.output;
  EXPECT_NE(diverged.output.find("rank(s) 1 differ"), std::string::npos) << diverged.output;
}

// One slow reader: rank 1's batch of step 3 arrives a second late. The log line of steps 3-4
// names rank 1 and its wait; rank 0, which waited for rank 1 in the all-reduce and not for data,
// does not raise the mean to the maximum. The other lines show no such wait.
TEST_F(MultiRankTraining, ALateBatchShowsAsThatRanksDataWait) {
  const auto r = mpi_train(*this, 2, "late", kMpiOverrides, "--fault late_batch@3 --fault-rank 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(rank 1 waits "), std::string::npos) << r.output;
  std::ifstream metrics(dir / "late/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) {
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("data_wait_max_ms")) continue;
    ++lines;
    const double max_ms = j["data_wait_max_ms"].get<double>();
    EXPECT_GE(max_ms, j["data_wait_ms"].get<double>()) << line;
    if (j["step"] == 4) {  // 2 steps, one of them a second late
      EXPECT_EQ(j["data_wait_slowest_rank"], 1) << line;
      EXPECT_GE(max_ms, 500.0) << line;
      EXPECT_LT(j["data_wait_ms"].get<double>(), 0.75 * max_ms) << line;
    } else {
      EXPECT_LT(max_ms, 250.0) << line;
    }
  }
  EXPECT_EQ(lines, 3);  // steps 2, 4 and 5
}

// Two "nodes": ranks in separate network namespaces joined by veth, TCP only, launched through
// an rsh agent (launch/netns_mpirun.sh). Skipped only where namespaces cannot be made.
TEST_F(MultiRankTraining, TwoNodesOverTcpMatchOneRank) {
  const std::string yaml = dir / "nodes.yaml";
  std::ofstream(yaml) << tiny_config(manifest, dir / "nodes");
  std::string cmd = std::string(DIFFTRAIN_SOURCE_DIR) + "/launch/netns_mpirun.sh " +
                    DIFFTRAIN_BINARY + " train --config " + yaml;
  for (const auto& o : kMpiOverrides)
    cmd += " --set " + o;
  const auto r = difftrain::testing::run(cmd);
  if (r.exit_code == 77 && r.output.rfind("SKIP:", 0) == 0) GTEST_SKIP() << r.output;
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("2 ranks"), std::string::npos) << r.output;
  const auto one = train(config("one", kMpiOverrides));
  expect_same_model(config("one", kMpiOverrides), one.last_checkpoint,
                    tr::checkpoint_path(dir / "nodes", 5), false);
}

// launch/scaling.sh as a user runs it: a table row per rank count, and two PNG plots.
TEST_F(LaunchScripts, ScalingScriptWritesTheTableAndPlots) {
  const std::string yaml = dir / "scaling.yaml";
  std::ofstream(yaml) << tiny_config(manifest, dir / "unused");
  const auto r = difftrain::testing::run(
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DIFFTRAIN_BIN=" +
      std::string(DIFFTRAIN_BINARY) + " " + DIFFTRAIN_SOURCE_DIR +
      "/launch/scaling.sh --steps 4 --out " + (dir / "scaling") + " " + yaml + " 1 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream csv(dir / "scaling/scaling.csv");
  std::vector<std::vector<std::string>> rows;
  for (std::string line; std::getline(csv, line);) {
    rows.emplace_back();
    std::stringstream s(line);
    for (std::string cell; std::getline(s, cell, ',');)
      rows.back().push_back(cell);
  }
  ASSERT_EQ(rows.size(), 3u) << r.output;
  EXPECT_EQ(rows[0][0], "ranks");
  EXPECT_EQ(rows[1][0], "1");
  EXPECT_EQ(rows[1][1], "8");  // weak scaling: the config's batch per rank
  EXPECT_EQ(rows[2][0], "2");
  EXPECT_EQ(rows[2][1], "16");
  EXPECT_DOUBLE_EQ(std::stod(rows[1][6]), 1.0);  // 1 rank is its own ideal
  EXPECT_GT(std::stod(rows[2][2]), 0.0);
  EXPECT_EQ(rows[0][7], "data_wait_max_ms");
  EXPECT_GE(std::stod(rows[2][7]), 0.0);
  for (const char* png : {"scaling/scaling.png", "scaling/scaling_efficiency.png"}) {
    std::ifstream f(dir / png, std::ios::binary);
    char magic[4] = {};
    f.read(magic, 4);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG") << png;
  }
  EXPECT_NE(difftrain::testing::read_text(dir / "scaling/scaling.md").find("| 2 | 16 |"),
            std::string::npos);
}

}  // namespace
