// Host time each rank waits for its loader's next batch, gathered once per log line. Every rank
// waits for the slowest in the gradient all-reduce, so a reader that cannot keep up on one node
// slows the whole job; this names the rank, before it is guessed from images/s.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace difftrain::parallel {
class Communicator;
}

namespace difftrain::train {

// Per step: the mean over ranks, and the rank that waited longest with its wait.
struct DataWaitSummary {
  double mean_ms = 0, max_ms = 0;
  int64_t slowest_rank = 0;
};

class DataWait {
 public:
  // `device`: the communicator's (NCCL gathers device tensors only).
  explicit DataWait(const c10::Device& device) : device_(device) {}
  void add(double seconds) { seconds_ += seconds; }
  // Every rank's wait over the last `steps` steps (one all-gather: which rank waits is the point,
  // a sum would hide it), per step; then starts again.
  DataWaitSummary gather_and_reset(parallel::Communicator& comm, int64_t steps);

 private:
  c10::Device device_;
  double seconds_ = 0;  // this rank's, since the last gather
};

// data_wait_ms, data_wait_max_ms and data_wait_slowest_rank of a metrics record.
void add_data_wait(nlohmann::json& record, const DataWaitSummary& s);
// " (rank 3 waits 12.5 ms for data)" for a console line, once waiting takes a tenth of the
// record's step_time_ms on some rank; "" before, or without the fields.
std::string data_wait_note(const nlohmann::json& record);

}  // namespace difftrain::train
