// Helpers of the CUDA tests: the tiny training config and the checkpoint comparisons of
// tests/train/test_trainer.cpp (the same tolerances, so that "matches" means what it means there),
// TF32 switched off, and the mpirun command that puts two ranks on the one GPU.
#pragma once

#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "data/manifest.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "model/unet.hpp"
#include "train/checkpoint.hpp"
#include "train/config.hpp"
#include "train/setup.hpp"

namespace difftrain::testing {

namespace tr = difftrain::train;

// Skips the test (with the reason in the report) where there is no GPU.
#define DIFFTRAIN_REQUIRE_CUDA()                                                   \
  do {                                                                             \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device is visible"; \
  } while (0)

// fp32 on a GPU is full fp32 only with TF32 off: cuDNN convolutions use TF32 (a 10-bit mantissa)
// by default, which puts results 1e-3 apart from the CPU's. Child processes get the same through
// NVIDIA_TF32_OVERRIDE=0 (kNoTf32Env).
class NoTf32 {
 public:
  NoTf32()
      : cudnn_(at::globalContext().allowTF32CuDNN()),
        cublas_(at::globalContext().allowTF32CuBLAS()) {
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~NoTf32() {
    at::globalContext().setAllowTF32CuDNN(cudnn_);
    at::globalContext().setAllowTF32CuBLAS(cublas_);
  }
  NoTf32(const NoTf32&) = delete;
  NoTf32& operator=(const NoTf32&) = delete;

 private:
  bool cudnn_, cublas_;
};
inline const std::string kNoTf32Env = "NVIDIA_TF32_OVERRIDE=0 ";

// tests/train/test_trainer.cpp's tiny UNet on 16x16 grayscale images.
inline std::string tiny_train_config(const std::string& manifest, const std::string& run_dir) {
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
         run_dir + ", log_every: 2, timestep_stats_every: 3, timestep_buckets: 5}\n";
}

// Every tensor a checkpoint holds, by key, loaded into CPU objects.
inline std::map<std::string, at::Tensor> checkpoint_tensors(const tr::Config& c,
                                                            const std::string& path) {
  const auto manifest = data::read_manifest(c.data.train);
  model::UNet net(tr::unet_config(c, tr::data_shape(c, &manifest)));
  const auto params = net->parameters();
  auto optimizer = tr::make_adamw(params, c.training.lr, c.training.weight_decay);
  auto emas = tr::make_emas(c.training.ema_rates, params);
  auto sampler = diffusion::make_timestep_sampler(
      diffusion::TimestepSamplerKind::loss_second_moment, c.diffusion.steps, at::kCPU);
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
  out["cursor"] = torch::tensor({step, epoch, batch});
  return out;
}

// ||theta_a - theta_b|| / ||theta_b - theta_0|| over every parameter: how far one run ended from
// the other, relative to how far training moved the weights. A wrong update of every element
// gives about sqrt(2); rounding, far less. test_trainer.cpp's runs must stay below 0.05.
inline double relative_update_difference(const tr::Config& c, const std::string& a_path,
                                         const std::string& b_path) {
  const auto manifest = data::read_manifest(c.data.train);
  torch::manual_seed(c.seed);  // the trainer's initial weights
  model::UNet initial(tr::unet_config(c, tr::data_shape(c, &manifest)));
  const auto a = checkpoint_tensors(c, a_path);
  const auto b = checkpoint_tensors(c, b_path);
  double apart = 0, moved = 0;
  for (const auto& p : initial->named_parameters()) {
    const at::Tensor& end_b = b.at("model/" + p.key());
    apart += (a.at("model/" + p.key()) - end_b).square().sum().item<double>();
    moved += (end_b - p.value()).square().sum().item<double>();
  }
  return std::sqrt(apart / moved);
}

// test_trainer.cpp's tolerance of W ranks against 1: the relative update difference below
// `max_relative` (0.05 there) and, with `elementwise` (fp32), parameters within rtol 1e-4 +
// atol 1e-5 (lr / 10 at the lr 1e-4 of these runs) and the same data cursor. The worst
// elementwise difference is printed either way.
inline void expect_same_training(const tr::Config& c, const std::string& a_path,
                                 const std::string& b_path, bool elementwise,
                                 double max_relative = 0.05) {
  const double difference = relative_update_difference(c, a_path, b_path);
  const auto a = checkpoint_tensors(c, a_path);
  const auto b = checkpoint_tensors(c, b_path);
  double worst = 0;
  std::string worst_key;
  for (const auto& [key, t] : a) {
    if (key.rfind("model/", 0) != 0 && key != "cursor") continue;
    const double diff = (t - b.at(key)).abs().max().item<double>();
    if (diff > worst) worst = diff, worst_key = key;
    if (elementwise) {
      EXPECT_TRUE(at::allclose(t, b.at(key), 1e-4, 1e-5))
          << key << ": max difference " << diff << " of " << t.abs().max().item<double>();
    }
  }
  std::cout << "relative update difference " << difference << "; largest parameter difference "
            << worst << " (" << worst_key << ")\n";
  EXPECT_LT(difference, max_relative);
}

// Every element of every parameter finite.
inline bool all_finite(const std::map<std::string, at::Tensor>& tensors) {
  for (const auto& [key, t] : tensors)
    if (t.is_floating_point() && !at::isfinite(t).all().item<bool>()) return false;
  return true;
}

// `mpirun -np ranks` of a command, each rank with its own NCCL_HOSTID, so that NCCL accepts
// several ranks on one GPU (over its socket transport on the loopback interface). TF32 off.
inline std::string mpirun_on_one_gpu(int ranks, const std::string& command) {
  return kNoTf32Env +
         "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
         "timeout 170 mpirun --oversubscribe --bind-to none -np " +
         std::to_string(ranks) + " " + DIFFTRAIN_PER_RANK_HOSTID + " " + command;
}

}  // namespace difftrain::testing
