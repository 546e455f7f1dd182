#include "train/metrics.hpp"

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "parallel/communicator.hpp"

namespace difftrain::train {
namespace {

// Slots of Metrics::sums_.
enum Slot : int64_t {
  kLoss,
  kMse,
  kVb,
  kSamples,
  kQuartileLoss,                       // 4 slots
  kQuartileCount = kQuartileLoss + 4,  // 4 slots
  kGradNorm = kQuartileCount + 4,
  kSteps,
  kSkipped,
  kLongestSkipRun,
  kSlots
};

}  // namespace

Metrics::Metrics(const c10::Device& device, long num_timesteps, int64_t timestep_buckets)
    : num_timesteps_(num_timesteps), buckets_(timestep_buckets), data_wait_(device) {
  const auto f64 = at::TensorOptions(device).dtype(at::kDouble);
  sums_ = at::zeros({kSlots}, f64);
  skips_in_a_row_ = at::zeros({1}, f64);
  per_t_ = at::zeros({buckets_, 6}, f64);
  nonfinite_per_t_ = at::zeros({num_timesteps}, at::TensorOptions(device).dtype(at::kInt));
}

void Metrics::add_samples(const at::Tensor& t, const at::Tensor& loss, const at::Tensor& mse,
                          const at::Tensor& weighted_mse, const at::Tensor& vb) {
  const at::Tensor l = loss.to(at::kDouble), m = mse.to(at::kDouble), v = vb.to(at::kDouble);
  const at::Tensor wm = weighted_mse.to(at::kDouble);
  sums_.narrow(0, kLoss, 1).add_(l.sum());
  sums_.narrow(0, kMse, 1).add_(m.sum());
  sums_.narrow(0, kVb, 1).add_(v.sum());
  sums_.narrow(0, kSamples, 1).add_(static_cast<double>(t.size(0)));
  const at::Tensor q = (t * 4).div(num_timesteps_, "floor");
  sums_.narrow(0, kQuartileLoss, 4).index_add_(0, q, l);
  sums_.narrow(0, kQuartileCount, 4).index_add_(0, q, at::ones_like(l));
  const at::Tensor bucket = (t * buckets_).div(num_timesteps_, "floor");
  per_t_.index_add_(0, bucket, at::stack({at::ones_like(l), l, l.square(), m, wm, v}, 1));
  nonfinite_per_t_.index_add_(0, t, at::isfinite(loss).logical_not().to(at::kInt));
}

void Metrics::add_step(const at::Tensor& grad_norm, const at::Tensor& skipped) {
  const at::Tensor applied_norm = at::where(skipped.to(at::kBool), 0.0, grad_norm.to(at::kDouble));
  sums_.narrow(0, kGradNorm, 1).add_(applied_norm);
  sums_.narrow(0, kSteps, 1).add_(1.0);
  sums_.narrow(0, kSkipped, 1).add_(skipped.to(at::kDouble));
  skips_in_a_row_.mul_(skipped).add_(skipped);
  at::Tensor longest = sums_.narrow(0, kLongestSkipRun, 1);
  at::maximum_out(longest, longest, skips_in_a_row_);
}

std::vector<int64_t> Metrics::nonfinite_timesteps_and_reset() {
  const at::Tensor t = nonfinite_per_t_.nonzero().flatten().cpu();
  nonfinite_per_t_.zero_();
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()};
}

MetricsSummary Metrics::reduce_and_reset(parallel::Communicator& comm) {
  comm.all_reduce(sums_, parallel::ReduceOp::sum);
  const at::Tensor h = sums_.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
  sums_.zero_();
  const double* v = h.data_ptr<double>();
  const auto mean = [](double sum, double n) { return n > 0 ? sum / n : 0.0; };
  MetricsSummary s;
  s.samples = static_cast<int64_t>(v[kSamples]);
  s.loss = mean(v[kLoss], v[kSamples]);
  s.mse = mean(v[kMse], v[kSamples]);
  s.vb = mean(v[kVb], v[kSamples]);
  for (int q = 0; q < 4; ++q)
    s.loss_quartile[q] = mean(v[kQuartileLoss + q], v[kQuartileCount + q]);
  // Every rank adds the same (already reduced) grad norm and step count.
  const double ranks = static_cast<double>(comm.size());
  s.steps = static_cast<int64_t>(v[kSteps] / ranks);
  s.skipped_steps = static_cast<int64_t>(v[kSkipped] / ranks);
  s.longest_skip_run = static_cast<int64_t>(v[kLongestSkipRun] / ranks);
  s.grad_norm = mean(v[kGradNorm] / ranks, static_cast<double>(s.steps - s.skipped_steps));

  s.data_wait = data_wait_.gather_and_reset(comm, s.steps);
  return s;
}

nlohmann::json Metrics::timestep_stats_and_reset(parallel::Communicator& comm) {
  comm.all_reduce(per_t_, parallel::ReduceOp::sum);
  const at::Tensor h = per_t_.to(at::kCPU, /*non_blocking=*/false, /*copy=*/true);
  per_t_.zero_();
  nlohmann::json buckets = nlohmann::json::array();
  for (int64_t i = 0; i < buckets_; ++i) {
    const double n = h[i][0].item<double>();
    const auto mean = [&](int col) { return n > 0 ? h[i][col].item<double>() / n : 0.0; };
    buckets.push_back({{"t_begin", i * num_timesteps_ / buckets_},
                       {"t_end", (i + 1) * num_timesteps_ / buckets_},
                       {"count", static_cast<int64_t>(n)},
                       {"loss_mean", mean(1)},
                       {"loss_second_moment", mean(2)},
                       {"mse_mean", mean(3)},
                       {"weighted_mse_mean", mean(4)},
                       {"vb_mean", mean(5)}});
  }
  return {{"timestep_buckets", buckets}};
}

nlohmann::json summary_json(const MetricsSummary& s) {
  nlohmann::json j = {{"loss", s.loss},
                      {"mse", s.mse},
                      {"vb", s.vb},
                      {"loss_q0", s.loss_quartile[0]},
                      {"loss_q1", s.loss_quartile[1]},
                      {"loss_q2", s.loss_quartile[2]},
                      {"loss_q3", s.loss_quartile[3]},
                      {"grad_norm", s.grad_norm},
                      {"samples", s.samples},
                      {"skipped_steps", s.skipped_steps}};
  add_data_wait(j, s.data_wait);
  return j;
}

std::string log_line(const nlohmann::json& r, int64_t max_steps) {
  const int64_t step = r["step"];
  std::string progress = fmt::format("step {}", step);
  if (max_steps > 0) {
    const double sps = 1000.0 / r["step_time_ms"].get<double>();
    const double eta = static_cast<double>(max_steps - step) / sps;
    progress = fmt::format("step {}/{} ({:.0f}%, ETA {:.0f}s)", step, max_steps,
                           100.0 * step / max_steps, eta);
  }
  std::string line = fmt::format(
      "{} | loss {:.4f} mse {:.4f} vb {:.4f} | by t quartile {:.3f} {:.3f} {:.3f} {:.3f} | "
      "grad {:.3f} lr {:.2e} scale {:g} | {:.1f} img/s {:.0f} ms/step{} {:.0f} MiB",
      progress, r["loss"].get<double>(), r["mse"].get<double>(), r["vb"].get<double>(),
      r["loss_q0"].get<double>(), r["loss_q1"].get<double>(), r["loss_q2"].get<double>(),
      r["loss_q3"].get<double>(), r["grad_norm"].get<double>(), r["lr"].get<double>(),
      r["loss_scale"].get<double>(), r["images_per_s"].get<double>(),
      r["step_time_ms"].get<double>(), data_wait_note(r), r["rss_mb"].get<double>());
  if (r.contains("device_peak_allocated_mb"))
    line += fmt::format(" | GPU {:.0f} MiB peak, {:.0f} MiB reserved",
                        r["device_peak_allocated_mb"].get<double>(),
                        r["device_reserved_mb"].get<double>());
  return line;
}

double resident_memory_mb() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "VmRSS:") {
      double kb = 0;
      status >> kb;
      return kb / 1024.0;
    }
    status.ignore(1 << 16, '\n');
  }
  return 0.0;
}

std::optional<DeviceMemory> device_memory_and_reset_peak(const c10::Device& device) {
  if (!device.is_cuda()) return std::nullopt;
  const c10::DeviceIndex index =
      device.has_index() ? device.index() : at::accelerator::getDeviceIndex();
  // The device-generic allocator interface: no CUDA header, so CPU builds of LibTorch link too.
  const auto stats = at::accelerator::getDeviceStats(index);
  at::accelerator::resetPeakStats(index);
  constexpr auto all = static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  const auto mb = [](int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); };
  return DeviceMemory{mb(stats.allocated_bytes[all].peak), mb(stats.reserved_bytes[all].current)};
}

}  // namespace difftrain::train
