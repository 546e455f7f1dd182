// The training loop on one rank: learning on a fixed batch, exact resume, microbatch averaging,
// checkpoints under signals and corruption, class conditioning, bad steps, config errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "data/manifest.hpp"
#include "data/test_files.hpp"
#include "diffusion/bound.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "diffusion/respace.hpp"
#include "model/unet.hpp"
#include "parallel/communicator.hpp"
#include "train/checkpoint.hpp"
#include "train/config.hpp"
#include "train/ema.hpp"
#include "train/heldout_bpd.hpp"
#include "train/loss_scaler.hpp"
#include "train/setup.hpp"
#include "train/step_rng.hpp"
#include "train/train_step.hpp"
#include "train/trainer.hpp"

namespace fs = std::filesystem;
namespace tr = difftrain::train;
using difftrain::testing::TempDir;

namespace {

// A tiny UNet on 16x16 grayscale images: fast enough for dozens of steps per test.
std::string tiny_config(const std::string& manifest, const std::string& run_dir,
                        const std::string& extra = "") {
  return "seed: 3\ndevice: cpu\n"
         "data: {train: " +
         manifest +
         ", pad_to: 16}\n"
         "model: {model_channels: 32, channel_mult: [1, 2], num_res_blocks: 1,"
         " attention_resolutions: [8], dropout: 0.0}\n"
         "diffusion: {schedule: cosine, steps: 50, loss: hybrid}\n"
         "training: {batch_size: 8, lr: 0.001, max_steps: 6, checkpoint_every: 3,"
         " ema_rates: [0.9, 0.99], threads: 1}\n"
         "logging: {run_dir: " +
         run_dir +
         ", log_every: 2, timestep_stats_every: 3,"
         " timestep_buckets: 5}\n" +
         extra;
}

struct Fixture : ::testing::Test {
  TempDir dir;
  std::string manifest;
  void SetUp() override {
    at::set_num_threads(1);
    manifest =
        difftrain::testing::write_synthetic_set(dir / "data", {40, 24}, 14, 14, 1, 10).manifest;
  }
  tr::Config config(const std::string& run, const std::vector<std::string>& overrides = {},
                    const std::string& extra = "") {
    return tr::parse_config(tiny_config(manifest, dir / run, extra), overrides);
  }
  tr::TrainResult train(const tr::Config& c, const tr::TrainOptions& o = {}) {
    auto comm = difftrain::parallel::make_local_communicator();
    tr::Cluster cluster{*comm, nullptr, {}};
    return tr::train(c, cluster, o);
  }
};

tr::TrainOptions resume_auto() {
  tr::TrainOptions o;
  o.resume = "auto";
  return o;
}

tr::TrainOptions with_fault(const std::string& fault) {
  tr::TrainOptions o;
  o.fault = fault;
  return o;
}

// Every tensor a checkpoint holds, by key, for bitwise comparison.
std::map<std::string, at::Tensor> checkpoint_tensors(const tr::Config& c, const std::string& path) {
  const auto manifest = difftrain::data::read_manifest(c.data.train);
  const auto shape = tr::data_shape(c, &manifest);
  difftrain::model::UNet net(tr::unet_config(c, shape));
  const auto params = net->parameters();
  auto optimizer = tr::make_adamw(params, c.training.lr, c.training.weight_decay);
  auto emas = tr::make_emas(c.training.ema_rates, params);
  auto sampler = difftrain::diffusion::make_timestep_sampler(
      difftrain::diffusion::TimestepSamplerKind::loss_second_moment, c.diffusion.steps, at::kCPU);
  auto scaler = tr::make_loss_scaler(false, 1, 1, 1, at::kCPU);
  int64_t step = 0, epoch = 0, batch = 0;
  tr::TrainStateRefs s{*net, optimizer, emas, sampler, scaler, step, epoch, batch};
  tr::load_checkpoint(path, s);
  std::map<std::string, at::Tensor> out;
  for (const auto& p : net->named_parameters())
    out["model/" + p.key()] = p.value().clone();
  for (std::size_t i = 0; i < emas.size(); ++i)
    for (std::size_t j = 0; j < emas[i].params.size(); ++j)
      out["ema/" + std::to_string(i) + "/" + std::to_string(j)] = emas[i].params[j];
  for (std::size_t j = 0; j < params.size(); ++j) {
    auto& st = static_cast<torch::optim::AdamWParamState&>(
        *optimizer.state->state().at(params[j].unsafeGetTensorImpl()));
    out["adam/exp_avg/" + std::to_string(j)] = st.exp_avg();
    out["adam/exp_avg_sq/" + std::to_string(j)] = st.exp_avg_sq();
    out["adam/step/" + std::to_string(j)] = torch::tensor(st.step());
  }
  out["cursor"] = torch::tensor({step, epoch, batch});
  return out;
}

TEST_F(Fixture, ExactResumeIsBitIdentical) {
  const auto straight = train(config("straight"));
  ASSERT_EQ(straight.step, 6);
  const auto first = train(config("resumed", {"training.max_steps=3"}));
  ASSERT_EQ(first.step, 3);
  const auto second = train(config("resumed"), resume_auto());
  ASSERT_EQ(second.step, 6);
  const auto a = checkpoint_tensors(config("straight"), straight.last_checkpoint);
  const auto b = checkpoint_tensors(config("resumed"), second.last_checkpoint);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [key, t] : a)
    EXPECT_TRUE(at::equal(t, b.at(key))) << key;
}

TEST(Training, MicrobatchesAverageToTheFullBatchGradient) {
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
  std::vector<std::vector<at::Tensor>> grads;
  for (int64_t micro : {0, 2, 4}) {
    for (auto& p : net->parameters())
      p.mutable_grad() = at::Tensor();
    tr::StepSettings s;
    s.microbatch = micro;
    s.timestep_scale = tr::timestep_scale(c);
    tr::forward_backward(*net, d, tr::make_loss_spec(c), in, s, nullptr);
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
TEST(Training, StepNoiseRowsDoNotDependOnTheSplit) {
  const at::Tensor whole = tr::step_noise(7, 5, 0, 8, {1, 4, 4});
  EXPECT_TRUE(at::equal(tr::step_noise(7, 5, 3, 3, {1, 4, 4}), whole.narrow(0, 3, 3)));
  EXPECT_FALSE(at::equal(tr::step_noise(7, 6, 0, 8, {1, 4, 4}), whole));  // another step
  EXPECT_NEAR(tr::step_noise(1, 0, 0, 64, {3, 16, 16}).std().item<double>(), 1.0, 0.02);
}

// `mpirun -np W difftrain train` ends with the parameters of one rank with the same global batch.
// The sums over ranks associate differently from the 1-rank sums, and Adam turns a rounding
// difference of a near-zero gradient into up to lr of update: hence atol of lr / 10.
// `mpirun -np ranks difftrain train` of the fixture's config in run directory f.dir / run.
difftrain::testing::RunResult mpi_train(Fixture& f, int ranks, const std::string& run,
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

// Parameters (and the data cursor) of two checkpoints: equal within the tolerance of W ranks
// against 1 rank, or bitwise.
void expect_same_model(const tr::Config& c, const std::string& a_path, const std::string& b_path,
                       bool bitwise) {
  const auto a = checkpoint_tensors(c, a_path);
  const auto b = checkpoint_tensors(c, b_path);
  for (const auto& [key, t] : a) {
    if (bitwise) {
      EXPECT_TRUE(at::equal(t, b.at(key))) << key;
      continue;
    }
    if (key.rfind("model/", 0) == 0 || key == "cursor") {
      EXPECT_TRUE(at::allclose(t, b.at(key), 1e-4, 1e-5))
          << key << ": max difference " << (t - b.at(key)).abs().max().item<double>() << " of "
          << t.abs().max().item<double>();
    }
  }
}

// ||theta_W - theta_1|| / ||theta_1 - theta_0|| over every parameter: how far one run ended from
// the other, relative to how far training moved the weights at all. A wrong update of every
// element (gradients applied to the wrong weights) gives about sqrt(2); rounding, far less.
double relative_update_difference(const tr::Config& c, const std::string& a_path,
                                  const std::string& b_path) {
  const auto manifest = difftrain::data::read_manifest(c.data.train);
  torch::manual_seed(c.seed);  // the trainer's initial weights
  difftrain::model::UNet initial(tr::unet_config(c, tr::data_shape(c, &manifest)));
  const auto a = checkpoint_tensors(c, a_path);
  const auto b = checkpoint_tensors(c, b_path);
  double apart = 0, moved = 0;
  for (const auto& p : initial->named_parameters()) {
    const at::Tensor& end_a = a.at("model/" + p.key());
    apart += (end_a - b.at("model/" + p.key())).square().sum().item<double>();
    moved += (end_a - p.value()).square().sum().item<double>();
  }
  return std::sqrt(apart / moved);
}

const std::vector<std::string> kMpiOverrides{"training.max_steps=5", "training.batch_size=12",
                                             "training.lr=0.0001"};

// fp32 runs match element by element (expect_same_model's tolerance). Under bf16 autocast the
// ranks' smaller per-rank batches round differently, and Adam turns some of those differences
// into up to lr per step, so bf16 runs are compared by how far their updates differ as a whole.
void expect_ranks_match_one_rank(Fixture& f, int ranks, const std::vector<std::string>& extra,
                                 bool elementwise = true) {
  std::vector<std::string> overrides = kMpiOverrides;
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  const auto one = f.train(f.config("one_rank", overrides));
  const std::string run = "ranks" + std::to_string(ranks);
  const auto r = mpi_train(f, ranks, run, overrides);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const tr::Config c = f.config("one_rank", overrides);
  const std::string theirs = tr::checkpoint_path(f.dir / run, 5);
  const double difference = relative_update_difference(c, one.last_checkpoint, theirs);
  std::cout << "relative update difference, " << ranks << " ranks against 1: " << difference
            << "\n";
  EXPECT_LT(difference, 0.05);
  if (elementwise) expect_same_model(c, one.last_checkpoint, theirs, false);
}

TEST_F(Fixture, TwoRanksMatchOneRank) {
  expect_ranks_match_one_rank(*this, 2, {});
}
TEST_F(Fixture, ThreeRanksWithMicrobatchesMatchOneRank) {
  expect_ranks_match_one_rank(*this, 3, {"training.microbatch=2"});
}
TEST_F(Fixture, ImportanceSamplerRunsOnTwoRanksAsOnOne) {
  expect_ranks_match_one_rank(*this, 2, {"diffusion.timestep_sampler=loss-second-moment"});
}
// Channels-last weights get channels-last gradient buckets: with contiguous bucket views the
// fused AdamW applied each gradient element to another weight, about 2 x lr per step off.
TEST_F(Fixture, TwoRanksChannelsLastMatchOneRank) {
  expect_ranks_match_one_rank(*this, 2, {"model.channels_last=true"});
}
// bf16 autocast, channels-last by `auto`: the configuration multi-GPU users train in.
TEST_F(Fixture, TwoRanksBf16MatchOneRank) {
  expect_ranks_match_one_rank(*this, 2, {"training.precision=bf16"}, /*elementwise=*/false);
}

// Failures under mpirun: the job ends non-zero well within the time a test allows (no rank waits
// forever), the last checkpoint is valid, and --resume auto continues from it.
struct Timed {
  difftrain::testing::RunResult result;
  double seconds;
};
Timed timed_mpi_train(Fixture& f, int ranks, const std::string& run,
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

TEST_F(Fixture, KilledRankEndsTheJobAndTwoRanksResumeExactly) {
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

TEST_F(Fixture, SignalOnOneRankStopsEveryRankAtTheNextLogStep) {
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
TEST_F(Fixture, SlurmPreemptionCheckpointsAndTheNextJobResumes) {
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

TEST_F(Fixture, HungRankIsNamedByTheWatchdogAndOneRankResumes) {
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

TEST_F(Fixture, ReplicaCheckPassesWithImportanceSamplingAndCatchesADivergedRank) {
  auto o = kMpiOverrides;
  o.push_back("diffusion.timestep_sampler=loss-second-moment");
  o.push_back("training.check_replicas_every=1");
  const auto same = mpi_train(*this, 2, "same", o);
  EXPECT_EQ(same.exit_code, 0) << same.output;
  const auto diverged = mpi_train(*this, 2, "diverged", o, "--fault diverge@2 --fault-rank 1");
  EXPECT_NE(diverged.exit_code, 0) << diverged.output;
  EXPECT_NE(diverged.output.find("replica check after step 3"), std::string::npos)
      << diverged.output;
  EXPECT_NE(diverged.output.find("rank(s) 1 differ"), std::string::npos) << diverged.output;
}

// Two "nodes": ranks in separate network namespaces joined by veth, TCP only, launched through
// an rsh agent (launch/netns_mpirun.sh). Skipped only where namespaces cannot be made.
TEST_F(Fixture, TwoNodesOverTcpMatchOneRank) {
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
TEST_F(Fixture, ScalingScriptWritesTheTableAndPlots) {
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
  for (const char* png : {"scaling/scaling.png", "scaling/scaling_efficiency.png"}) {
    std::ifstream f(dir / png, std::ios::binary);
    char magic[4] = {};
    f.read(magic, 4);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG") << png;
  }
  EXPECT_NE(difftrain::testing::read_text(dir / "scaling/scaling.md").find("| 2 | 16 |"),
            std::string::npos);
}

TEST_F(Fixture, CorruptLatestCheckpointFallsBackToThePrevious) {
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

TEST_F(Fixture, StopSignalLeavesAValidCheckpoint) {
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

TEST_F(Fixture, ClassConditionalModelLearnsItsLabelEmbedding) {
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

TEST_F(Fixture, NonFiniteLossSkipsTheStepThenStops) {
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

TEST_F(Fixture, WritesResolvedConfigAndMetrics) {
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
TEST_F(Fixture, LogsHeldOutBitsPerDimThatIsTheFullBoundWhenEveryTimestepIsUsed) {
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
  const auto model = difftrain::diffusion::scaled_timestep_model(
      [&](const at::Tensor& x, const at::Tensor& t) { return net->forward(x, t, {}); },
      tr::timestep_scale(c));
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

TEST_F(Fixture, HeldOutBatchOfAnotherShapeIsAConfigError) {
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
    const auto out = net->forward(x_t, t.to(at::kFloat) * tr::timestep_scale(c));
    const at::Tensor l =
        difftrain::diffusion::training_terms(d, spec, out, x0, x_t, t, noise).loss.mean();
    l.backward();
    opt.step();
    (step == 0 ? first : last) = l.item<double>();
  }
  EXPECT_LT(last, 0.6 * first) << loss << ": " << first << " -> " << last;
}

TEST(Training, HybridLossDrops) {
  expect_loss_drops("hybrid", "learned_range");
}
TEST(Training, SimpleLossDrops) {
  expect_loss_drops("simple", "fixed_large");
}
TEST(Training, VlbLossDrops) {
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

TEST(Config, ChannelsLastAutoMeansUnderAutocast) {
  auto c = tr::parse_config(tiny_config("unused", "runs/x"));
  EXPECT_EQ(c.model.channels_last, "auto");
  EXPECT_FALSE(tr::use_channels_last(c, "fp32"));
  EXPECT_TRUE(tr::use_channels_last(c, "bf16"));
  EXPECT_TRUE(tr::use_channels_last(c, "fp16"));
  c = tr::parse_config(tiny_config("unused", "runs/x"), {"model.channels_last=true"});
  EXPECT_TRUE(tr::use_channels_last(c, "fp32"));
  c = tr::parse_config(tiny_config("unused", "runs/x"), {"model.channels_last=false"});
  EXPECT_FALSE(tr::use_channels_last(c, "bf16"));
}

TEST(Ema, SkippedStepLeavesTheAverageUnchanged) {
  at::Tensor p = at::full({3}, 2.0);
  auto emas = tr::make_emas({0.5}, {at::zeros({3})});
  tr::update_emas(emas, {p}, 100, /*warmup=*/false, at::ones({}));
  EXPECT_TRUE(at::equal(emas[0].params[0], at::zeros({3})));
  tr::update_emas(emas, {p}, 100, /*warmup=*/false, at::zeros({}));
  EXPECT_TRUE(at::allclose(emas[0].params[0], at::ones({3})));
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
  expect_config_error({"model.attention_resolutions=[12]"}, "attention_resolutions");
  expect_config_error({"training.batch_size=9"}, "does not divide into 2 ranks", 2);
  expect_config_error({"training.microbatch=3"}, "does not divide the per-rank batch of 4", 2);
  expect_config_error({"diffusion.model_var_type=fixed_small"},
                      "'hybrid' needs a learned variance");
  expect_config_error({"diffusion.model_var_type=learnd"}, "unknown model_var_type 'learnd'");
  expect_config_error({"training.precision=fp8"}, "'training.precision' = 'fp8' is not one of");
}

}  // namespace
