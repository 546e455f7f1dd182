// When a training loop stops early: on SIGTERM / SIGINT (cluster preemption, Ctrl-C) or at
// training.max_time, with a checkpoint. The ranks agree at logging steps only, so that the steps
// between need no collective, and every rank stops at the same step.
#pragma once

#include <c10/core/Device.h>

#include <chrono>
#include <cstdint>
#include <memory>

namespace difftrain::parallel {
class Communicator;
}

namespace difftrain::train {

struct TrainingConfig;

// Catches SIGTERM and SIGINT while alive (the previous handlers come back after).
class StopSignalGuard {
 public:
  StopSignalGuard();
  ~StopSignalGuard();
  StopSignalGuard(const StopSignalGuard&) = delete;
  StopSignalGuard& operator=(const StopSignalGuard&) = delete;

 private:
  struct Saved;
  std::unique_ptr<Saved> saved_;
};

enum class Stop { no, time_limit, signal };
// A collective: a signal seen by any rank, else the time limit seen by any rank (`start`: when
// training began). Rank 0 logs why the run stops at `step`.
Stop agree_on_stop(parallel::Communicator& comm, const TrainingConfig& training,
                   std::chrono::steady_clock::time_point start, const c10::Device& device,
                   int64_t step);

}  // namespace difftrain::train
