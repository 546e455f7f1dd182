// Debug faults for the failure tests (`difftrain train --fault KIND@STEP [--fault-rank R]`),
// injected at one seam: the start of a step.
#pragma once

#include <cstdint>
#include <string>

namespace difftrain::train {

struct TrainState;

struct Fault {
  // none, hang (stop responding), exit (exit without a word), kill (SIGKILL itself), term
  // (SIGTERM itself, as Slurm before the time limit), nan (the step's loss is NaN), diverge
  // (perturb this rank's weights: the replicas differ), late_batch (this rank's batch arrives a
  // second late, as from a slow file system)
  enum class Kind { none, hang, exit, kill, term, nan, diverge, late_batch };
  Kind kind = Kind::none;
  int64_t step = -1;
};

// "KIND@STEP" for this rank (none when `fault_rank` names another rank); throws ConfigError
// naming the valid forms.
Fault parse_fault(const std::string& text, int fault_rank, int rank);

// Called at the start of every step, before its batch is read: does what the fault asks when its
// step has come. Returns whether this step's loss must be NaN.
bool inject_fault(const Fault& fault, int64_t step, TrainState& state);

}  // namespace difftrain::train
