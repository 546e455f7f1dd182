// Training telemetry: per-sample terms and per-step values accumulate on the device between log
// lines (no host synchronisation), and are reduced across ranks once per log line.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "train/data_wait.hpp"

namespace difftrain::parallel {
class Communicator;
}

namespace difftrain::train {

struct MetricsSummary {
  double loss = 0, mse = 0, vb = 0;     // means over the samples since the last summary
  std::array<double, 4> loss_quartile;  // mean loss by quartile of t (q0 = smallest t)
  double grad_norm = 0;                 // mean over steps
  int64_t samples = 0, steps = 0, skipped_steps = 0;
  int64_t longest_skip_run = 0;  // the most consecutive skipped steps within the period
  // Host time per step spent waiting for the loader's next batch: the mean over ranks, and the
  // rank that waited longest with its wait. A reader slower than the step, on one node or all,
  // shows here before it is guessed from images/s.
  DataWaitSummary data_wait;
};

class Metrics {
 public:
  Metrics(const c10::Device& device, long num_timesteps, int64_t timestep_buckets);

  // Per-sample terms of this rank's (micro)batch, without the importance weights: loss =
  // weighted_mse + vb, weighted_mse = w(t) * mse (diffusion.weighting).
  void add_samples(const at::Tensor& t, const at::Tensor& loss, const at::Tensor& mse,
                   const at::Tensor& weighted_mse, const at::Tensor& vb);
  // `skipped`: 0-dim float32, 1 when the step was not applied (non-finite loss or gradients).
  void add_step(const at::Tensor& grad_norm, const at::Tensor& skipped);
  // Host seconds this rank waited for a batch (loader.next()).
  void add_data_wait(double seconds) { data_wait_.add(seconds); }

  // Sums over every rank since the last call (one all-reduce, and an all-gather of each rank's
  // data wait), then starts again.
  MetricsSummary reduce_and_reset(parallel::Communicator& comm);
  // Per t-bucket count, mean and second moment of the loss, and the means of each term: mse,
  // weighted mse and vb, so that one sees what a weighting does where.
  nlohmann::json timestep_stats_and_reset(parallel::Communicator& comm);
  // The timesteps at which this rank saw a non-finite per-sample loss since the last call (no
  // reduction: each rank names its own).
  std::vector<int64_t> nonfinite_timesteps_and_reset();

 private:
  long num_timesteps_;
  int64_t buckets_;
  at::Tensor sums_;             // [kSlots] float64, see metrics.cpp
  at::Tensor skips_in_a_row_;   // [1] float64: skipped steps up to the last one (across periods)
  at::Tensor per_t_;            // [buckets, 6] float64: count, loss, loss^2, mse, weighted mse, vb
  at::Tensor nonfinite_per_t_;  // [T] int32: non-finite per-sample losses at each timestep
  DataWait data_wait_;
};

nlohmann::json summary_json(const MetricsSummary& s);
// The console line for a metrics record (spdlog), with progress when max_steps is known.
std::string log_line(const nlohmann::json& record, int64_t max_steps);
// Resident set size of this process in MiB (/proc/self/status).
double resident_memory_mb();

// The GPU memory of this process, from LibTorch's caching allocator, in MiB: the most that tensors
// held at once since the last call (the peak then starts again, as EDM2 logs it), and what the
// allocator holds from the driver now (what nvidia-smi counts, less the CUDA context).
struct DeviceMemory {
  double peak_allocated_mb = 0, reserved_mb = 0;
};
// Empty on the CPU.
std::optional<DeviceMemory> device_memory_and_reset_peak(const c10::Device& device);

}  // namespace difftrain::train
