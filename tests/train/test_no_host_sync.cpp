// docs/design.md, "No host synchronisation in a step": on a GPU, every read of a tensor's value by
// the host waits for the work queued before it, and the host stops running ahead of the device.
// Those reads are ATen ops of their own: .item()'s _local_scalar_dense, nonzero, and the ops whose
// output size depends on the values (masked_select, bincount, unique, ...). They run through the
// same code on the CPU, so counting them on the trainer's thread in a CPU run shows what a GPU
// run would wait for. A run of 8 steps and a run of 4, each with log lines (where the host reads
// the metrics on purpose) only at its first and last step, must read equally often: the steps in
// between read nothing.
#include <ATen/record_function.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <set>
#include <string>
#include <vector>

#include "train/classifier_trainer.hpp"
#include "trainer_fixture.hpp"

namespace {

namespace tr = difftrain::train;
using TrainerRun = difftrain::testing::TrainerFixture;

std::atomic<int> host_reads{0};
thread_local int op_depth = 0;  // ATen ops under way on this thread

// Counts the reads called by difftrain's code itself, not those inside another ATen op: a CPU
// kernel reads its own host memory (the CPU's fused AdamW reads each step count with .item()),
// where the CUDA kernel reads device memory and waits for nothing.
std::unique_ptr<at::ObserverContext> enter_op(const at::RecordFunction& fn) {
  static const std::set<std::string> reads{"aten::item",
                                           "aten::_local_scalar_dense",
                                           "aten::is_nonzero",
                                           "aten::nonzero",
                                           "aten::masked_select",
                                           "aten::bincount",
                                           "aten::unique_consecutive",
                                           "aten::_unique",
                                           "aten::_unique2",
                                           "aten::unique_dim",
                                           "aten::repeat_interleave",
                                           "aten::equal",
                                           "aten::allclose"};
  if (op_depth++ == 0 && reads.count(fn.name()) != 0) ++host_reads;
  return nullptr;
}
void leave_op(const at::RecordFunction&, at::ObserverContext*) {
  --op_depth;
}

// The host reads of run `name` (the trainer on this thread) for `steps` steps.
int host_reads_of(TrainerRun& f, const std::string& name, int steps,
                  const std::vector<std::string>& overrides) {
  const auto c = f.config(name + "_" + std::to_string(steps),
                          difftrain::testing::steps_between_log_lines(overrides, steps));
  host_reads = 0;
  const auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(enter_op, leave_op)
          .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
  f.train(c);
  at::removeCallback(handle);
  return host_reads.load();
}

TEST_F(TrainerRun, StepsBetweenLogLinesReadNothingOnTheHost) {
  for (const auto& [name, overrides] : difftrain::testing::step_variants()) {
    const int four = host_reads_of(*this, name, 4, overrides);
    const int eight = host_reads_of(*this, name, 8, overrides);
    EXPECT_EQ(eight, four) << name << ": the 4 more steps read the host " << eight - four
                           << " times more (" << four << " in 4 steps, " << eight << " in 8)";
  }
}

// The same for train-classifier's steps (guided-diffusion's noisy classifier), in fp32 and bf16.
TEST_F(TrainerRun, ClassifierStepsBetweenLogLinesReadNothingOnTheHost) {
  const auto reads = [&](const std::string& name, int steps, std::vector<std::string> overrides) {
    overrides.push_back("logging.bpd_every=0");
    const std::string run = name + "_" + std::to_string(steps);
    const auto c =
        tr::parse_config(difftrain::testing::tiny_classifier_config(manifest, manifest, dir / run),
                         difftrain::testing::steps_between_log_lines(overrides, steps));
    host_reads = 0;
    const auto handle = at::addThreadLocalCallback(
        at::RecordFunctionCallback(enter_op, leave_op)
            .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
    auto comm = difftrain::parallel::make_local_communicator();
    tr::Cluster cluster{*comm, nullptr, {}};
    tr::train_classifier(c, cluster, "");
    at::removeCallback(handle);
    return host_reads.load();
  };
  for (const auto& [name, overrides] :
       std::vector<std::pair<std::string, std::vector<std::string>>>{
           {"classifier_fp32", {}}, {"classifier_bf16", {"training.precision=bf16"}}}) {
    const int four = reads(name, 4, overrides), eight = reads(name, 8, overrides);
    EXPECT_EQ(eight, four) << name << ": the 4 more steps read the host " << eight - four
                           << " times more (" << four << " in 4 steps, " << eight << " in 8)";
  }
}

// The count counts: reading a loss on the host (as improved-diffusion's logging does every step)
// and selecting by mask are seen, once each (not the ops they run inside).
TEST_F(TrainerRun, AHostReadInAStepIsCounted) {
  host_reads = 0;
  const auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(enter_op, leave_op)
          .scopes({at::RecordScope::FUNCTION, at::RecordScope::BACKWARD_FUNCTION}));
  const at::Tensor loss = at::rand({8}).mean();
  const double read = loss.item<double>();
  const at::Tensor kept = at::rand({8}).masked_select(at::rand({8}) > 0.5);
  at::removeCallback(handle);
  EXPECT_GE(read, 0.0);
  EXPECT_LE(kept.numel(), 8);
  EXPECT_EQ(host_reads.load(), 2);
}

}  // namespace
