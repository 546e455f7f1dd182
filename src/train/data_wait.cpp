#include "train/data_wait.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "parallel/communicator.hpp"

namespace difftrain::train {

DataWaitSummary DataWait::gather_and_reset(parallel::Communicator& comm, int64_t steps) {
  const at::Tensor waits =
      comm.all_gather(at::full({1}, seconds_, at::TensorOptions(device_).dtype(at::kDouble))).cpu();
  seconds_ = 0;
  const double ms_per_step = steps > 0 ? 1000.0 / static_cast<double>(steps) : 0.0;
  return {waits.mean().item<double>() * ms_per_step, waits.max().item<double>() * ms_per_step,
          waits.argmax().item<int64_t>()};
}

void add_data_wait(nlohmann::json& record, const DataWaitSummary& s) {
  record["data_wait_ms"] = s.mean_ms;
  record["data_wait_max_ms"] = s.max_ms;
  record["data_wait_slowest_rank"] = s.slowest_rank;
}

std::string data_wait_note(const nlohmann::json& r) {
  if (!r.contains("data_wait_max_ms") || !r.contains("step_time_ms")) return "";
  const double max_ms = r["data_wait_max_ms"].get<double>();
  if (max_ms < 0.1 * r["step_time_ms"].get<double>()) return "";
  return fmt::format(" (rank {} waits {:.1f} ms for data)",
                     r["data_wait_slowest_rank"].get<int64_t>(), max_ms);
}

}  // namespace difftrain::train
