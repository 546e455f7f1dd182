// Helpers of the CUDA tests: the trainer tests' tiny config and checkpoint comparisons
// (tests/train/trainer_fixture.hpp, with the multi-rank tests' tolerances, so that "matches" means
// what it means there), TF32 switched off, and the mpirun command that puts two ranks on the one
// GPU.
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
#include "train/trainer_fixture.hpp"

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

// The multi-rank tests' tolerance of W ranks against 1 (tests/train/test_trainer_mpi.cpp): the
// relative update difference below `max_relative` (0.05 there) and, with `elementwise` (fp32),
// parameters within rtol 1e-4 + parameter_atol (lr / 10, 1e-5 at the lr 1e-4 of these runs) and
// the same data cursor. The worst elementwise difference is printed either way.
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
      EXPECT_TRUE(
          at::allclose(t, b.at(key), 1e-4, key == "cursor" ? 0 : parameter_atol(c, t, b.at(key))))
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
