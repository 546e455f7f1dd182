// What the trainer tests share: a tiny config on a synthetic data set, a fixture that trains it in
// this process, and comparisons of checkpoints (bitwise, or within the tolerance of W ranks
// against 1).
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "data/manifest.hpp"
#include "data/test_files.hpp"
#include "model/unet.hpp"
#include "parallel/communicator.hpp"
#include "train/checkpoint.hpp"
#include "train/classifier.hpp"
#include "train/config.hpp"
#include "train/setup.hpp"
#include "train/train_state.hpp"
#include "train/trainer.hpp"

namespace difftrain::testing {

namespace tr = difftrain::train;

// A tiny UNet on 16x16 grayscale images: fast enough for dozens of steps per test.
inline std::string tiny_config(const std::string& manifest, const std::string& run_dir,
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

// A tiny noisy classifier (difftrain train-classifier) on the same images, labelled.
inline std::string tiny_classifier_config(const std::string& train, const std::string& validation,
                                          const std::string& run_dir) {
  return "seed: 5\ndevice: cpu\n"
         "data: {train: " +
         train + ", validation: " + validation +
         ", pad_to: 16, class_conditional: true}\n"
         "model: {model_channels: 32, channel_mult: [1, 2], num_res_blocks: 1,"
         " attention_resolutions: [8], num_head_channels: 32, resblock_updown: true,"
         " pool: attention}\n"
         "diffusion: {schedule: cosine, steps: 50}\n"
         "training: {batch_size: 8, lr: 0.001, max_steps: 6, checkpoint_every: 3, threads: 1}\n"
         "logging: {run_dir: " +
         run_dir + ", log_every: 2, bpd_every: 3, bpd_batch: 16}\n";
}

struct TrainerFixture : ::testing::Test {
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

// The step's variants that users run, for the checks that a step never waits for the device
// (tests/train/test_no_host_sync.cpp on the CPU, Cuda.StepsBetweenLogLinesNeverWaitForTheGpu):
// each precision (fp16 with its loss scaler), channels-last, gradient clipping, microbatches, EMA
// warm-up, the importance sampler, class conditioning with label dropout.
inline std::vector<std::pair<std::string, std::vector<std::string>>> step_variants() {
  return {{"fp32", {}},
          {"bf16",
           {"training.precision=bf16", "model.channels_last=true", "training.grad_clip=1.0",
            "training.microbatch=4", "training.ema_warmup=true"}},
          {"fp16", {"training.precision=fp16"}},
          {"importance", {"diffusion.timestep_sampler=loss-second-moment"}},
          {"guidance", {"data.class_conditional=true", "training.p_uncond=0.2"}}};
}

// `overrides` and a run of `steps` steps whose log lines (where the host reads the metrics on
// purpose) come only at its first and last step, and no checkpoint but the last.
inline std::vector<std::string> steps_between_log_lines(std::vector<std::string> overrides,
                                                        int steps) {
  const std::string n = std::to_string(steps);
  overrides.insert(overrides.end(), {"training.max_steps=" + n, "logging.log_every=" + n,
                                     std::string("training.checkpoint_every=1000"),
                                     std::string("logging.timestep_stats_every=0")});
  return overrides;
}

inline tr::TrainOptions resume_auto() {
  tr::TrainOptions o;
  o.resume = "auto";
  return o;
}

inline tr::TrainOptions with_fault(const std::string& fault) {
  tr::TrainOptions o;
  o.fault = fault;
  return o;
}

// Every tensor a checkpoint holds, by key, for bitwise comparison.
inline std::map<std::string, at::Tensor> checkpoint_tensors(const tr::Config& c,
                                                            const std::string& path) {
  const auto manifest = difftrain::data::read_manifest(c.data.train);
  auto comm = difftrain::parallel::make_local_communicator();
  tr::TrainState state = tr::make_train_state(c, tr::data_shape(c, &manifest), at::kCPU, *comm);
  tr::load_checkpoint(path, state);
  std::map<std::string, at::Tensor> out;
  for (const auto& [key, t] : tr::named_state_tensors(state))
    out[key] = t.clone();
  const auto params = state.net->parameters();
  for (std::size_t j = 0; j < params.size(); ++j) {
    auto& st = static_cast<torch::optim::AdamWParamState&>(
        *state.optimizer.state->state().at(params[j].unsafeGetTensorImpl()));
    out["adam/exp_avg/" + std::to_string(j)] = st.exp_avg();
    out["adam/exp_avg_sq/" + std::to_string(j)] = st.exp_avg_sq();
    out["adam/step/" + std::to_string(j)] = torch::tensor(st.step());
  }
  out["cursor"] = torch::tensor({state.step, state.cursor.epoch, state.cursor.batch});
  return out;
}

// The weights, Adam moments, step and data cursor of a classifier's checkpoint.
inline std::map<std::string, at::Tensor> classifier_checkpoint(const tr::Config& c,
                                                               const std::string& path) {
  const auto manifest = difftrain::data::read_manifest(c.data.train);
  auto comm = difftrain::parallel::make_local_communicator();
  tr::ClassifierState s =
      tr::make_classifier_state(c, tr::data_shape(c, &manifest), at::kCPU, *comm);
  tr::load_classifier_checkpoint(path, s);
  std::map<std::string, at::Tensor> out;
  for (const auto& p : s.net->named_parameters())
    out["model/" + p.key()] = p.value().clone();
  const auto params = s.net->parameters();
  for (std::size_t j = 0; j < params.size(); ++j) {
    auto& st = static_cast<torch::optim::AdamWParamState&>(
        *s.optimizer.state->state().at(params[j].unsafeGetTensorImpl()));
    out["adam/exp_avg/" + std::to_string(j)] = st.exp_avg();
    out["adam/exp_avg_sq/" + std::to_string(j)] = st.exp_avg_sq();
  }
  out["cursor"] = torch::tensor({s.step, s.cursor.epoch, s.cursor.batch});
  return out;
}

// The absolute tolerance of one parameter tensor, W ranks against 1 (fp32): lr / 10. Except for
// a tensor still smaller than one Adam step (lr) in both runs: a zero-initialised bias whose
// gradient is zero in exact arithmetic (a convolution's that feeds a GroupNorm of one channel a
// group, as in the tests' 32-channel models), which only Adam's response to rounding noise has
// moved, by up to a step whatever the noise; within a step.
inline double parameter_atol(const tr::Config& c, const at::Tensor& a, const at::Tensor& b) {
  const double largest = std::max(a.abs().max().item<double>(), b.abs().max().item<double>());
  return largest < c.training.lr ? c.training.lr : c.training.lr / 10;
}

// Parameters (and the data cursor) of two checkpoints: equal within the tolerance of W ranks
// against 1 rank (rtol 1e-4, parameter_atol), or bitwise.
inline void expect_same_model(const tr::Config& c, const std::string& a_path,
                              const std::string& b_path, bool bitwise) {
  const auto a = checkpoint_tensors(c, a_path);
  const auto b = checkpoint_tensors(c, b_path);
  for (const auto& [key, t] : a) {
    if (bitwise) {
      EXPECT_TRUE(at::equal(t, b.at(key))) << key;
      continue;
    }
    if (key.rfind("model/", 0) == 0 || key == "cursor") {
      EXPECT_TRUE(
          at::allclose(t, b.at(key), 1e-4, key == "cursor" ? 0 : parameter_atol(c, t, b.at(key))))
          << key << ": max difference " << (t - b.at(key)).abs().max().item<double>() << " of "
          << t.abs().max().item<double>();
    }
  }
}

// ||theta_W - theta_1|| / ||theta_1 - theta_0|| over every parameter: how far one run ended from
// the other, relative to how far training moved the weights at all. A wrong update of every
// element (gradients applied to the wrong weights) gives about sqrt(2); rounding, far less.
inline double relative_update_difference(const tr::Config& c, const std::string& a_path,
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

}  // namespace difftrain::testing
