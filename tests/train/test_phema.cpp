// Post-hoc EMA (src/train/phema*.hpp, `difftrain phema`): the sigma_rel <-> gamma map against
// EDM2's examples, the profile inner product against numerical integration, the per-step update
// against its closed form, snapshot files, reconstruction (a tracked profile back at a snapshot
// time; on a real run, a third tracked profile from the other two), exact resume, two ranks, the
// config keys, and the command with its sweep and bad arguments.
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/difftrain_cli.hpp"
#include "data/manifest.hpp"
#include "data/test_files.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "model/unet.hpp"
#include "parallel/communicator.hpp"
#include "train/checkpoint.hpp"
#include "train/config.hpp"
#include "train/ema.hpp"
#include "train/loss_scaler.hpp"
#include "train/phema.hpp"
#include "train/phema_reconstruct.hpp"
#include "train/phema_snapshot.hpp"
#include "train/setup.hpp"
#include "train/train_state.hpp"
#include "train/trainer.hpp"
#include "train/trainer_fixture.hpp"

namespace fs = std::filesystem;
namespace tr = difftrain::train;
namespace ph = difftrain::train::phema;
using difftrain::testing::difftrain_cli;
using difftrain::testing::difftrain_mpi;
using difftrain::testing::TempDir;

namespace {

const at::Tensor kNoSkip = at::zeros({}, at::kFloat);
const at::Tensor kSkip = at::ones({}, at::kFloat);

// ---------------------------------------------------------------------------------------------
// The math.

TEST(PhemaMath, GammaOfSigmaRelMatchesTheEdm2Examples) {
  // np.roots([1, 7, 16 - s**-2, 12 - s**-2]).real.max(), as EDM2's std_to_exp.
  EXPECT_NEAR(ph::sigma_rel_to_gamma(0.05), 16.972198602303447, 1e-10);
  EXPECT_NEAR(ph::sigma_rel_to_gamma(0.10), 6.937203937601809, 1e-10);
  EXPECT_NEAR(ph::sigma_rel_to_gamma(0.15), 3.5578687748994646, 1e-10);
  for (double s : {1e-3, 0.02, 0.05, 0.1, 0.2, 0.28, 0.2886})
    EXPECT_NEAR(ph::gamma_to_sigma_rel(ph::sigma_rel_to_gamma(s)), s, 1e-13) << s;
  EXPECT_NEAR(ph::gamma_to_sigma_rel(0), ph::kMaxSigmaRel, 1e-16);
  EXPECT_NEAR(ph::kMaxSigmaRel, 1 / std::sqrt(12.0), 1e-16);
}

TEST(PhemaMath, SigmaRelOutsideTheRangeIsAnErrorNamingIt) {
  for (double s : {0.0, -0.1, 0.2887, 0.3, std::nan("")}) {
    try {
      ph::sigma_rel_to_gamma(s);
      ADD_FAILURE() << s << ": no error";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("is outside (0, 0.2887)"), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find(fmt::format("sigma_rel {}", s)), std::string::npos)
          << e.what();
    }
  }
}

// The profile of exponent gamma at time t, normalised to integrate to 1 over [0, t].
double profile(double tau, double t, double gamma) {
  return tau > t ? 0.0 : (gamma + 1) * std::pow(tau / t, gamma) / t;
}

// int_0^inf p_a p_b dtau, with tau = m e^-s (m = min(t_a, t_b)) so that the integrand is smooth
// and decays exponentially, by Simpson's rule on s in [0, 60].
double integrate_product(double t_a, double gamma_a, double t_b, double gamma_b) {
  const double m = std::min(t_a, t_b), end = 60;
  const int n = 200000;
  const double h = end / n;
  double sum = 0;
  for (int i = 0; i <= n; ++i) {
    const double tau = m * std::exp(-i * h);
    const double f = profile(tau, t_a, gamma_a) * profile(tau, t_b, gamma_b) * tau;
    sum += f * (i == 0 || i == n ? 1 : i % 2 ? 4 : 2);
  }
  return sum * h / 3;
}

TEST(PhemaMath, ProfileDotMatchesNumericalIntegrationOfTheTwoProfiles) {
  const double g05 = ph::sigma_rel_to_gamma(0.05), g10 = ph::sigma_rel_to_gamma(0.10),
               g25 = ph::sigma_rel_to_gamma(0.25);
  struct Case {
    double t_a, gamma_a, t_b, gamma_b;
  };
  for (const Case& c : {Case{100, g05, 100, g10}, Case{60, g10, 100, g05}, Case{100, g05, 30, g10},
                        Case{5e6, g25, 2e6, g25}, Case{7, g25, 9, g05}, Case{1, 0.3, 3, 12.0}}) {
    const double closed = ph::profile_dot(c.t_a, c.gamma_a, c.t_b, c.gamma_b);
    const double numeric = integrate_product(c.t_a, c.gamma_a, c.t_b, c.gamma_b);
    EXPECT_NEAR(closed, numeric, 1e-8 * numeric)
        << c.t_a << " " << c.gamma_a << " " << c.t_b << " " << c.gamma_b;
    // Symmetric.
    EXPECT_NEAR(closed, ph::profile_dot(c.t_b, c.gamma_b, c.t_a, c.gamma_a), 1e-14 * closed);
  }
}

// After steps k = 1..n of b images each, with theta = v_k during step k, the update gives v_k the
// weight of the power function over (k - 1, k]: (k^(gamma + 1) - (k - 1)^(gamma + 1)) /
// n^(gamma+1).
TEST(PhemaUpdate, AveragesWithThePowerFunctionWeightsAndASkippedStepAddsNothing) {
  const int64_t n = 30, b = 4;
  auto g = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor values = at::randn({n}, g, at::TensorOptions().dtype(at::kDouble));
  at::Tensor theta = at::zeros({2}, at::kDouble);
  ph::PowerFunctionEma ema = ph::make_power_function_ema({0.05, 0.10}, {theta});
  ph::PowerFunctionEma with_skips = ph::make_power_function_ema({0.05, 0.10}, {theta});
  for (int64_t k = 1; k <= n; ++k) {
    if (k % 7 == 3) {  // a skipped step between: theta is far off, but must get no weight
      theta.fill_(1000.0);
      ph::update(with_skips, {theta}, b, kSkip);
    }
    theta.fill_(values[k - 1].item<double>());
    ph::update(ema, {theta}, b, kNoSkip);
    ph::update(with_skips, {theta}, b, kNoSkip);
  }
  EXPECT_EQ(ema.images.item<double>(), static_cast<double>(n * b));
  EXPECT_EQ(with_skips.images.item<double>(), static_cast<double>(n * b));
  for (std::size_t p = 0; p < ema.profiles.size(); ++p) {
    const double e = ema.profiles[p].gamma + 1;
    double expected = 0;
    for (int64_t k = 1; k <= n; ++k)
      expected +=
          (std::pow(k, e) - std::pow(k - 1, e)) / std::pow(n, e) * values[k - 1].item<double>();
    EXPECT_NEAR(ema.profiles[p].params[0][0].item<double>(), expected, 1e-12) << p;
    EXPECT_TRUE(at::equal(with_skips.profiles[p].params[0], ema.profiles[p].params[0])) << p;
  }
}

TEST(PhemaUpdate, TheReplicaCheckCoversTheProfilesAndTheTime) {
  const at::Tensor theta = at::zeros({3});
  const ph::PowerFunctionEma ema = ph::make_power_function_ema({0.05, 0.10}, {theta});
  std::vector<at::Tensor> state;
  ph::append_replicated_state(ema, state);
  ASSERT_EQ(state.size(), 3u);
  EXPECT_TRUE(state[0].is_same(ema.images));
  EXPECT_TRUE(state[1].is_same(ema.profiles[0].params[0]));
  EXPECT_TRUE(state[2].is_same(ema.profiles[1].params[0]));
}

// ---------------------------------------------------------------------------------------------
// Snapshot files and the reconstruction, on a random walk of a small module's weights.

struct Walk {
  torch::nn::Linear module{nullptr};
  ph::PowerFunctionEma ema;
};

// `steps` steps of 4 images, a snapshot every `every` steps into run_dir.
Walk random_walk(const std::string& run_dir, const std::vector<double>& sigma_rels, int64_t steps,
                 int64_t every) {
  torch::manual_seed(1);
  Walk w{torch::nn::Linear(8, 16), {}};
  const auto params = w.module->parameters();
  w.ema = ph::make_power_function_ema(sigma_rels, params);
  torch::NoGradGuard no_grad;
  for (int64_t step = 1; step <= steps; ++step) {
    for (const auto& p : params)
      p.add_(at::randn_like(p) * 0.02 + 0.01);
    ph::update(w.ema, params, 4, kNoSkip);
    if (step % every == 0) ph::write_snapshot(run_dir, step, w.ema, *w.module, "seed: 0\n");
  }
  return w;
}

TEST(PhemaSnapshot, StoresFloat16ReadsBackAndCatchesCorruption) {
  TempDir dir;
  Walk w = random_walk(dir.path(), {0.05, 0.10}, 6, 3);
  w.ema.profiles[1].params[1][0].fill_(1e5);  // beyond float16: this tensor is kept in float32
  ph::write_snapshot(dir.path(), 7, w.ema, *w.module, "seed: 0\n");
  const std::string path = ph::snapshot_path(dir.path(), 7);
  EXPECT_EQ(fs::path(path).filename(), "snapshot_000000007.phema");
  const ph::Snapshot s = ph::read_snapshot(path);
  EXPECT_EQ(s.step, 7);
  EXPECT_EQ(s.images, 24);
  EXPECT_EQ(s.sigma_rels, (std::vector<double>{0.05, 0.10}));
  EXPECT_NEAR(s.gammas[0], 16.972198602303447, 1e-10);
  EXPECT_EQ(s.config_yaml, "seed: 0\n");
  ASSERT_EQ(s.tensors.size(), 4u);  // weight and bias of each profile; Linear has no buffers
  int visited = 0;
  ph::for_each_tensor(s, [&](const ph::SnapshotTensor& info, const at::Tensor& t) {
    const std::size_t j = info.name == "weight" ? 0 : 1;
    const at::Tensor& live = w.ema.profiles[static_cast<std::size_t>(info.profile)].params[j];
    const bool big = info.profile == 1 && info.name == "bias";
    EXPECT_EQ(info.dtype, big ? at::kFloat : at::kHalf) << info.name;
    EXPECT_TRUE(at::equal(t, live.to(info.dtype))) << info.name;
    ++visited;
  });
  EXPECT_EQ(visited, 4);
  // Snapshot size: float16 of both profiles, the one float32 tensor, a header and a trailer.
  EXPECT_LT(fs::file_size(path), 2 * (8 * 16 + 16) * 2 + 16 * 2 + 4096);

  // A flipped byte in the data: the layout still reads, the stream fails its checksum.
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(s.data_offset + 10));
    f.put('\x5a');
  }
  EXPECT_NO_THROW(ph::read_snapshot(path));
  try {
    ph::for_each_tensor(ph::read_snapshot(path), [](auto&, auto&) {});
    ADD_FAILURE() << "no error";
  } catch (const ph::SnapshotError& e) {
    EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << e.what();
  }
  // Truncated: not listed (with a warning); the others are.
  fs::resize_file(path, fs::file_size(path) - 5);
  EXPECT_THROW(ph::read_snapshot(path), ph::SnapshotError);
  std::vector<int64_t> steps;
  for (const auto& snapshot : ph::list_snapshots(dir.path()))
    steps.push_back(snapshot.step);
  EXPECT_EQ(steps, (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(ph::set_aside_snapshots_after(dir.path(), 3), 2);  // 6 and the truncated 7
  EXPECT_EQ(ph::list_snapshots(dir.path()).size(), 1u);
  // Moved, not deleted.
  const fs::path aside = fs::path(ph::snapshot_dir(dir.path())) / "superseded_at_step_3";
  EXPECT_EQ(std::distance(fs::directory_iterator(aside), fs::directory_iterator{}), 2);
}

TEST(PhemaReconstruct, ATrackedProfileAtASnapshotTimeGivesThatSnapshotBack) {
  TempDir dir;
  random_walk(dir.path(), {0.05, 0.10}, 60, 10);
  const ph::Plan last = ph::plan_reconstruction(dir.path(), std::nullopt);
  EXPECT_EQ(last.step, 60);
  EXPECT_EQ(last.inputs.size(), 12u);

  const ph::Plan plan = ph::plan_reconstruction(dir.path(), 40);
  ASSERT_EQ(plan.snapshots.size(), 4u);  // steps 10..40: none from after the target time
  EXPECT_EQ(plan.images, 160);
  const ph::Reconstruction r = ph::reconstruct(plan, {0.10}).front();
  EXPECT_LT(r.solution.residual, 1e-12);
  EXPECT_LT(r.solution.profile_error, 1e-6);
  for (std::size_t i = 0; i < plan.inputs.size(); ++i) {
    const bool itself =
        plan.snapshots[plan.inputs[i].snapshot].step == 40 && plan.inputs[i].profile == 1;
    EXPECT_NEAR(r.solution.coefficients[i], itself ? 1.0 : 0.0, 1e-9) << i;
  }
  // The float16 values of the snapshot, within float32 rounding of the float64 sum.
  ASSERT_EQ(r.model_state.size(), 2u);
  ph::for_each_tensor(
      plan.snapshots.back(), [&](const ph::SnapshotTensor& info, const at::Tensor& t) {
        if (info.profile != 1) return;
        const at::Tensor& got = r.model_state[info.name == "weight" ? 0 : 1].second;
        EXPECT_EQ(r.model_state[info.name == "weight" ? 0 : 1].first, info.name);
        EXPECT_EQ(got.scalar_type(), at::kFloat);
        const double err = (got.to(at::kDouble) - t.to(at::kDouble)).abs().max().item<double>();
        EXPECT_LE(err, 1e-6 * t.to(at::kDouble).abs().max().item<double>()) << info.name;
      });
}

// ---------------------------------------------------------------------------------------------
// The trainer and the command, on a tiny UNet and a synthetic data set.

// The trainer tests' tiny run (trainer_fixture.hpp) with one EMA rate and the profiles
// snapshotted every 2 steps.
std::string tiny_config(const std::string& manifest, const std::string& run_dir) {
  return tr::to_yaml(
      tr::parse_config(difftrain::testing::tiny_config(manifest, run_dir),
                       {"training.ema_rates=[0.9]", "training.phema.sigma_rels=[0.05, 0.1]",
                        "training.phema.snapshot_every=2", "logging.timestep_stats_every=0"}));
}

struct PhemaRun : difftrain::testing::TrainerFixture {
  std::string run_dir(const std::string& run) { return dir / run; }
  // This file's tiny_config: the profiles snapshotted every 2 steps.
  tr::Config config(const std::string& run, const std::vector<std::string>& overrides = {}) {
    return tr::parse_config(tiny_config(manifest, run_dir(run)), overrides);
  }
  using TrainerFixture::train;
  tr::TrainResult train(const tr::Config& c, const std::string& resume) {
    tr::TrainOptions o;
    o.resume = resume;
    return TrainerFixture::train(c, o);
  }
  // The profiles a checkpoint holds.
  ph::PowerFunctionEma profiles_in(const tr::Config& c, const std::string& path) {
    const auto data = difftrain::data::read_manifest(c.data.train);
    auto comm = difftrain::parallel::make_local_communicator();
    tr::TrainState state = tr::make_train_state(c, tr::data_shape(c, &data), at::kCPU, *comm);
    tr::load_checkpoint(path, state);
    return state.phema;
  }
};

std::vector<int64_t> snapshot_steps(const std::string& run_dir) {
  std::vector<int64_t> steps;
  for (const auto& s : ph::list_snapshots(run_dir))
    steps.push_back(s.step);
  return steps;
}

double squared_distance(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double sum = 0;
  for (std::size_t j = 0; j < a.size(); ++j)
    sum += (a[j].to(at::kDouble) - b[j].to(at::kDouble)).square().sum().item<double>();
  return sum;
}

// 40 steps, snapshots every 4: sigma_rel 0.07 reconstructed from the snapshots of 0.05 and 0.10
// alone against 0.07 tracked in the same run. Tolerance: the reconstruction must be within 5% of
// the distance between the two profiles it is made from (float16 snapshots, a least-squares fit of
// the profile from 10 snapshot times).
TEST_F(PhemaRun, AThirdProfileReconstructedFromTheOtherTwoMatchesItsDirectTracking) {
  const auto c = config(
      "three", {"training.max_steps=40", "training.checkpoint_every=40",
                "training.phema.sigma_rels=[0.05, 0.1, 0.07]", "training.phema.snapshot_every=4"});
  const auto r = train(c);
  const ph::PowerFunctionEma tracked = profiles_in(c, r.last_checkpoint);
  EXPECT_EQ(tracked.images.item<double>(), 40 * 8);

  const ph::Plan plan = ph::plan_reconstruction(run_dir("three"), std::nullopt, {0.05, 0.10});
  EXPECT_EQ(plan.step, 40);
  ASSERT_EQ(plan.inputs.size(), 20u);
  const ph::Reconstruction rec = ph::reconstruct(plan, {0.07}).front();
  std::vector<at::Tensor> reconstructed;
  for (const auto& [name, t] : rec.model_state)
    reconstructed.push_back(t);
  const auto& direct = tracked.profiles[2].params;
  const double error = std::sqrt(squared_distance(reconstructed, direct));
  const double apart =
      std::sqrt(squared_distance(tracked.profiles[0].params, tracked.profiles[1].params));
  const double raw = std::sqrt(squared_distance(tracked.profiles[1].params, direct));
  std::cout << "sigma_rel 0.07 from 0.05 and 0.10: |reconstructed - tracked| = " << error
            << ", |p0.05 - p0.10| = " << apart << ", |p0.10 - p0.07| = " << raw << ", relative "
            << error / apart << ", profile error " << rec.solution.profile_error << "\n";
  EXPECT_LT(rec.solution.profile_error, 0.05);
  EXPECT_LT(error, 0.05 * apart);
}

TEST_F(PhemaRun, ResumeKeepsTheProfilesAndSnapshotsBitIdentical) {
  const auto straight = train(config("straight"));
  EXPECT_EQ(snapshot_steps(run_dir("straight")), (std::vector<int64_t>{2, 4, 6}));
  train(config("resumed", {"training.max_steps=3"}));
  EXPECT_EQ(snapshot_steps(run_dir("resumed")), (std::vector<int64_t>{2, 3}));  // 3: the last
  // A snapshot of a step about to be trained again (as a crash after step 5 leaves one) is
  // moved aside on resume, not deleted.
  fs::copy_file(ph::snapshot_path(run_dir("resumed"), 2), ph::snapshot_path(run_dir("resumed"), 5));
  const auto resumed = train(config("resumed"), "auto");
  ASSERT_EQ(resumed.step, 6);
  EXPECT_EQ(snapshot_steps(run_dir("resumed")), (std::vector<int64_t>{2, 3, 4, 6}));
  EXPECT_TRUE(fs::exists(fs::path(ph::snapshot_dir(run_dir("resumed"))) / "superseded_at_step_3" /
                         fs::path(ph::snapshot_path(run_dir("resumed"), 5)).filename()));

  const auto a = profiles_in(config("straight"), straight.last_checkpoint);
  const auto b = profiles_in(config("resumed"), resumed.last_checkpoint);
  EXPECT_EQ(a.images.item<double>(), b.images.item<double>());
  for (std::size_t k = 0; k < a.profiles.size(); ++k)
    for (std::size_t j = 0; j < a.profiles[k].params.size(); ++j)
      EXPECT_TRUE(at::equal(a.profiles[k].params[j], b.profiles[k].params[j])) << k << "/" << j;
  for (int64_t step : {4, 6}) {
    const auto sa = ph::read_snapshot(ph::snapshot_path(run_dir("straight"), step));
    const auto sb = ph::read_snapshot(ph::snapshot_path(run_dir("resumed"), step));
    EXPECT_EQ(sa.images, sb.images);
    std::vector<at::Tensor> ta, tb;
    ph::for_each_tensor(sa, [&](auto&, const at::Tensor& t) { ta.push_back(t); });
    ph::for_each_tensor(sb, [&](auto&, const at::Tensor& t) { tb.push_back(t); });
    ASSERT_EQ(ta.size(), tb.size());
    for (std::size_t i = 0; i < ta.size(); ++i)
      EXPECT_TRUE(at::equal(ta[i], tb[i])) << "step " << step << " tensor " << i;
  }
}

TEST_F(PhemaRun, ResumeWithOtherProfilesIsRefusedNamingBothLists) {
  train(config("run", {"training.max_steps=3"}));
  try {
    train(config("run", {"training.phema.sigma_rels=[0.05, 0.2]"}), "auto");
    FAIL() << "no error";
  } catch (const tr::CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("sigma_rel 0.05, 0.1, the config 0.05, 0.2"),
              std::string::npos)
        << e.what();
  }
  // A checkpoint without profiles (post-hoc EMA off, or written before difftrain tracked them)
  // continues with profiles that start afresh: they average the steps after the resume only.
  train(config("off", {"training.max_steps=3", "training.phema.sigma_rels=[]"}));
  EXPECT_TRUE(snapshot_steps(run_dir("off")).empty());
  const auto resumed = train(config("off"), "auto");
  EXPECT_EQ(resumed.step, 6);
  EXPECT_EQ(snapshot_steps(run_dir("off")), (std::vector<int64_t>{4, 6}));  // from the resume on
  const ph::PowerFunctionEma fresh = profiles_in(config("off"), resumed.last_checkpoint);
  EXPECT_EQ(fresh.images.item<double>(), 3 * 8.0);  // 3 steps of 8 images since the resume
  // Turning it off resumes; the checkpoint's profiles are left behind.
  EXPECT_EQ(train(config("run", {"training.phema.sigma_rels=[]"}), "auto").step, 6);
}

TEST(PhemaConfig, KeysParseValidateAndAWrongKeyIsNamedWithTheValidOnes) {
  const std::string yaml = "data: {train: m.json}\n";
  const tr::Config d = tr::parse_config(yaml);
  EXPECT_EQ(d.training.phema.sigma_rels, (std::vector<double>{0.05, 0.10}));
  EXPECT_EQ(d.training.phema.snapshot_every, 5000);
  const tr::Config c = tr::parse_config(
      yaml, {"training.phema.sigma_rels=[0.02, 0.2]", "training.phema.snapshot_every=7"});
  EXPECT_EQ(c.training.phema.sigma_rels, (std::vector<double>{0.02, 0.2}));
  EXPECT_EQ(c.training.phema.snapshot_every, 7);
  EXPECT_NO_THROW(tr::validate(c));
  EXPECT_EQ(tr::to_yaml(tr::parse_config(tr::to_yaml(c))), tr::to_yaml(c));
  EXPECT_TRUE(
      tr::parse_config(yaml, {"training.phema.sigma_rels=[]"}).training.phema.sigma_rels.empty());

  const auto error = [&](const std::vector<std::string>& overrides, const std::string& yaml_in) {
    try {
      tr::validate(tr::parse_config(yaml_in, overrides));
    } catch (const tr::ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error({"training.phema.sigma_rel=[0.1]"}, yaml)
                .find("unknown key 'training.phema.sigma_rel' (did you mean "
                      "'training.phema.sigma_rels'?); valid keys in 'training.phema': "
                      "sigma_rels, snapshot_every"),
            std::string::npos)
      << error({"training.phema.sigma_rel=[0.1]"}, yaml);
  EXPECT_NE(error({}, yaml + "training: {phema: {snapshot_evry: 3}}\n")
                .find("did you mean 'training.phema.snapshot_every'?"),
            std::string::npos);
  EXPECT_NE(error({"training.phema.sigma_rels=[0.05, 0.3]"}, yaml)
                .find("config key 'training.phema.sigma_rels' = 0.3 must be in (0, 0.2887)"),
            std::string::npos);
  EXPECT_NE(error({"training.phema.sigma_rels=[0.05, 0.05]"}, yaml).find("is listed twice"),
            std::string::npos);
  EXPECT_NE(error({"training.phema.snapshot_every=0"}, yaml)
                .find("config key 'training.phema.snapshot_every' = 0 must be >= 1"),
            std::string::npos);
  EXPECT_NE(error({"training.phema.sigma_rels=zero"}, yaml)
                .find("key 'training.phema.sigma_rels' must be a list of numbers"),
            std::string::npos);
  EXPECT_NE(error({"training.phema=3"}, yaml).find("section 'phema' must be a mapping"),
            std::string::npos);
}

TEST_F(PhemaRun, CommandWritesACheckpointThatSampleAndEvalTake) {
  const auto c = config("cli");
  train(c);
  const std::string run = run_dir("cli"), out = dir / "out/phema_008.pt";
  const auto p = difftrain_cli("phema --run " + run + " --sigma-rel 0.08 --out " + out);
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_NE(p.output.find("at step 6 (48 images), from 6 profiles (sigma_rel 0.05, 0.1) of 3 "
                          "snapshots, steps 2-6"),
            std::string::npos)
      << p.output;
  EXPECT_NE(p.output.find("sigma_rel 0.08 (gamma 9.4523"), std::string::npos) << p.output;
  EXPECT_NE(p.output.find("residual ||A x - B|| / ||B|| = "), std::string::npos) << p.output;
  EXPECT_NE(p.output.find("coefficient"), std::string::npos) << p.output;

  // The file holds what the library reconstructs, at the snapshot's step.
  const ph::Reconstruction rec =
      ph::reconstruct(ph::plan_reconstruction(run, std::nullopt), {0.08}).front();
  const auto data = difftrain::data::read_manifest(c.data.train);
  difftrain::model::UNet net(tr::unet_config(c, tr::data_shape(c, &data)));
  tr::load_model_weights(out, *net);
  const auto named = net->named_parameters();
  ASSERT_EQ(named.size(), rec.model_state.size());
  for (const auto& [name, t] : rec.model_state)
    EXPECT_TRUE(at::equal(named[name], t)) << name;
  EXPECT_EQ(tr::read_checkpoint_info(out).step, 6);
  EXPECT_TRUE(
      tr::parse_config(tr::read_checkpoint_info(out).config_yaml).training.ema_rates.empty());

  const auto sampled =
      difftrain_cli("sample --checkpoint " + out + " --num 2 --steps 4 --out " + (dir / "s"));
  EXPECT_EQ(sampled.exit_code, 0) << sampled.output;
  EXPECT_NE(sampled.output.find("raw weights"), std::string::npos) << sampled.output;
  const auto evaluated = difftrain_cli("eval --checkpoint " + out + " --data " + manifest +
                                       " --num 2 --out " + (dir / "e.json"));
  ASSERT_EQ(evaluated.exit_code, 0) << evaluated.output;
  const auto report = nlohmann::json::parse(difftrain::testing::read_text(dir / "e.json"));
  EXPECT_GT(report["total_bpd"].get<double>(), 0);

  // Several at once, at an earlier snapshot.
  const auto several =
      difftrain_cli("phema --run " + run + " --sigma-rel 0.06 --sigma-rel 0.12 --step 4 --out " +
                    (dir / "multi.pt"));
  ASSERT_EQ(several.exit_code, 0) << several.output;
  for (const char* name : {"multi_sigma0.06.pt", "multi_sigma0.12.pt"}) {
    EXPECT_TRUE(tr::checkpoint_problem(dir / name).empty()) << name;
    EXPECT_EQ(tr::read_checkpoint_info(dir / name).step, 4) << name;
  }
}

TEST_F(PhemaRun, CommandBadArgumentsAreOneLineErrorsWithExitCode2) {
  train(config("bad"));
  const std::string run = run_dir("bad"), out = dir / "x.pt";
  fs::create_directories(dir / "empty");
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases{
      {"--sigma-rel 0.3 --out " + out, "--sigma-rel 0.3 is outside (0, 0.2887)"},
      {"--sigma-rel 0 --out " + out, "--sigma-rel 0 is outside (0, 0.2887)"},
      {"--sigma-rel 0.1 --step 5 --out " + out,
       "step 5 has no post-hoc EMA snapshot; the snapshots of " + run + " are at steps 2, 4, 6"},
      {"--sigma-rel 0.1", "--sigma-rel needs --out PATH"},
      {"", "give --sigma-rel S (repeatable) or --sweep LO:HI:N"},
      {"--sigma-rel 0.1 --out " + out + " --num 3", "--num goes with --sweep"},
      {"--sigma-rel 0.1 --input-sigma-rel 0.07 --out " + out,
       "tracked sigma_rel 0.07; the run tracked 0.05, 0.1"},
      {"--sigma-rel 0.1 --out " + run + "/checkpoints/ckpt_000000009.pt",
       "named like a training checkpoint"},
      {"--sweep 0.1:0.3:5 --eval " + manifest,
       "--sweep '0.1:0.3:5' must be LO:HI:N with 0 < LO < HI < 0.2887 and N >= 2 values"},
      {"--sweep 0.05:0.1 --eval " + manifest, "--sweep '0.05:0.1' must be LO:HI:N"},
      {"--sweep 0.05:0.1:4", "--sweep needs --eval MANIFEST"},
  };
  for (const Case& c : cases) {
    const auto p = difftrain_cli("phema --run " + run + " " + c.args);
    EXPECT_EQ(p.exit_code, 2) << c.args << "\n" << p.output;
    EXPECT_NE(p.output.find(c.message), std::string::npos) << c.args << "\n" << p.output;
    EXPECT_EQ(std::count(p.output.begin(), p.output.end(), '\n'), 1) << c.args << "\n" << p.output;
  }
  const auto none =
      difftrain_cli("phema --run " + (dir / "empty") + " --sigma-rel 0.1 --out " + out);
  EXPECT_EQ(none.exit_code, 2) << none.output;
  EXPECT_NE(none.output.find("no post-hoc EMA snapshots in " + (dir / "empty") + "/phema"),
            std::string::npos)
      << none.output;
  EXPECT_FALSE(fs::exists(out));
}

struct Csv {
  std::vector<std::string> header;
  std::vector<std::vector<double>> rows;
};
Csv read_csv(const std::string& path) {
  std::ifstream in(path);
  Csv csv;
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> cells;
    std::stringstream s(line);
    for (std::string cell; std::getline(s, cell, ',');)
      cells.push_back(cell);
    if (csv.header.empty()) {
      csv.header = cells;
      continue;
    }
    csv.rows.emplace_back();
    for (const auto& cell : cells)
      csv.rows.back().push_back(std::stod(cell));
  }
  return csv;
}

// The sweep on 1 and on 2 ranks: the same table (as `eval` on 1 and 2 ranks, within float32
// rounding); its best is the checkpoint kept, and `eval` of that checkpoint on the same images
// gives the same bits/dim.
TEST_F(PhemaRun, SweepWritesTheTableAndPlotNamesTheBestAndEvalAgrees) {
  train(config("sweep"));
  const std::string run = run_dir("sweep");
  const std::string args = "phema --run " + run + " --sweep 0.05:0.15:3 --eval " + manifest +
                           " --num 2 --batch 2 --out ";
  const auto one = difftrain_cli(args + (dir / "best.pt") + " --report " + (dir / "one.csv"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const Csv csv = read_csv(dir / "one.csv");
  EXPECT_EQ(csv.header, (std::vector<std::string>{"sigma_rel", "gamma", "bits_per_dim",
                                                  "standard_error", "profile_error"}));
  ASSERT_EQ(csv.rows.size(), 3u);
  std::size_t best = 0;
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_NEAR(csv.rows[i][0], 0.05 + 0.05 * static_cast<double>(i), 1e-12);
    EXPECT_NEAR(csv.rows[i][1], ph::sigma_rel_to_gamma(csv.rows[i][0]), 1e-8);
    EXPECT_GT(csv.rows[i][2], 0);
    if (csv.rows[i][2] < csv.rows[best][2]) best = i;
  }
  EXPECT_NE(one.output.find(fmt::format("best sigma_rel {}", csv.rows[best][0])), std::string::npos)
      << one.output;
  {
    std::ifstream png(dir / "one.png", std::ios::binary);
    char magic[4] = {};
    png.read(magic, 4);
    EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  }
  for (const auto& entry : fs::directory_iterator(dir.path()))
    EXPECT_EQ(entry.path().filename().string().find("one_sigma"), std::string::npos)
        << entry.path() << " left behind";

  const auto evaluated = difftrain_cli("eval --checkpoint " + (dir / "best.pt") + " --data " +
                                       manifest + " --num 2 --out " + (dir / "best.json"));
  ASSERT_EQ(evaluated.exit_code, 0) << evaluated.output;
  const auto report = nlohmann::json::parse(difftrain::testing::read_text(dir / "best.json"));
  EXPECT_NEAR(report["total_bpd"].get<double>(), csv.rows[best][2], 1e-9 * csv.rows[best][2]);

  const auto two = difftrain_mpi(2, args + (dir / "best2.pt") + " --report " + (dir / "two.csv"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  // The same weights; the network runs on batches of another size (float32 rounding).
  const Csv csv2 = read_csv(dir / "two.csv");
  ASSERT_EQ(csv2.rows.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i)
    EXPECT_NEAR(csv2.rows[i][2], csv.rows[i][2], 1e-5) << i;
}

// Two ranks track what one rank tracks (the replica check, every step, compares them), and only
// rank 0 writes the snapshots.
TEST_F(PhemaRun, TwoRanksTrackTheProfilesOfOneRankAndOnlyRankZeroWrites) {
  const std::vector<std::string> overrides{"training.max_steps=5", "training.batch_size=12",
                                           "training.lr=0.0001"};
  const auto one = train(config("one", overrides));
  const std::string yaml = dir / "two.yaml";
  std::ofstream(yaml) << tiny_config(manifest, run_dir("two"));
  std::string args = "train --config " + yaml + " --set training.check_replicas_every=1";
  for (const auto& o : overrides)
    args += " --set " + o;
  const auto p = difftrain_mpi(2, args);
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_EQ(snapshot_steps(run_dir("two")), (std::vector<int64_t>{2, 4, 5}));
  for (const auto& entry : fs::directory_iterator(ph::snapshot_dir(run_dir("two"))))
    EXPECT_EQ(entry.path().extension(), ".phema") << entry.path();
  const auto c = config("one", overrides);
  const auto a = profiles_in(c, one.last_checkpoint);
  const auto b = profiles_in(c, tr::checkpoint_path(run_dir("two"), 5));
  EXPECT_EQ(a.images.item<double>(), b.images.item<double>());
  for (std::size_t k = 0; k < a.profiles.size(); ++k)
    for (std::size_t j = 0; j < a.profiles[k].params.size(); ++j)
      EXPECT_TRUE(at::allclose(a.profiles[k].params[j], b.profiles[k].params[j], 1e-4, 1e-5))
          << k << "/" << j;
}

}  // namespace
