// `difftrain train`: the training loop on one or many ranks, written against parallel::Communicator
// only (a world of one process is the local communicator, and runs the same path).
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <string>

#include "train/config.hpp"

namespace difftrain::parallel {
class Communicator;
class Watchdog;
}  // namespace difftrain::parallel

namespace difftrain::train {

struct TrainOptions {
  // "" starts fresh, "auto" continues from the newest valid checkpoint of the run directory (or
  // starts fresh when it has none), anything else names a checkpoint file.
  std::string resume;
  // Debug faults for failure tests, at the start of step STEP: "hang@STEP" (this rank stops
  // responding), "exit@STEP" (exits without a word), "kill@STEP" (SIGKILLs itself), "nan@STEP"
  // (the loss is NaN), "diverge@STEP" (perturbs this rank's parameters: replicas differ).
  std::string fault;
  int fault_rank = -1;  // the rank the fault applies to; -1 = every rank
  // Resuming with another objective (schedule, T, target, variance, loss, timestep scaling) than
  // the checkpoint's is an error naming the keys, unless this is set: fine-tuning on purpose.
  bool allow_objective_change = false;
};

struct Cluster {
  parallel::Communicator& comm;
  parallel::Watchdog* watchdog = nullptr;  // told the current step, so timeouts name it
  // Waits for rank 0 to finish writing a checkpoint (a barrier that gives up); defaults to
  // comm.barrier().
  std::function<void(const std::string& what)> slow_barrier;
  // This rank's device (parallel::rank_device): the model, optimizer, EMA, sampler, loader staging
  // and held-out batch live there.
  c10::Device device = c10::kCPU;
};

struct TrainResult {
  int64_t step = 0;  // steps done
  std::string run_dir;
  std::string last_checkpoint;  // "" when none was written
  bool interrupted = false;     // stopped by SIGTERM / SIGINT
};

TrainResult train(const Config& config, Cluster& cluster, const TrainOptions& options = {});

// A checkpoint of `step` in run_dir: rank 0 writes it with `write(path)` and keeps the newest
// `keep`; every rank waits for it (the cluster's slow barrier). Returns its path.
std::string save_and_wait(Cluster& cluster, const std::string& run_dir, int64_t step, int64_t keep,
                          const char* why,
                          const std::function<void(const std::string& path)>& write);

}  // namespace difftrain::train
