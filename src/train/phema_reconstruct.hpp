// Post-hoc EMA reconstruction (EDM2 Appendix C.3, Algorithm 3; NVlabs/edm2 reconstruct_phema.py):
// the average of any sigma_rel at a snapshot's time t, as the least-squares combination of the
// snapshots' profiles up to t, solved in float64 and applied by streaming the snapshots one tensor
// at a time, so that memory stays at one float64 accumulator per output (two float32 models) plus
// one tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "train/phema_snapshot.hpp"

namespace difftrain::train::phema {

// One input of the solve: a profile of a snapshot.
struct Input {
  std::size_t snapshot = 0;  // index into Plan::snapshots
  std::size_t profile = 0;   // index into that snapshot's profiles
  double images = 0;         // t_i
  double gamma = 0;          // gamma_i
};

struct Solution {
  std::vector<double> coefficients;  // x_i, one per input, summing to 1
  double residual = 0;  // ||A x - B|| / ||B|| of the least-squares solve, before the scaling
  // ||sum_i x_i p_i - p|| / ||p||: how far the averaging profile obtained is from the one asked
  // for (relative L2 distance of the two weightings of training time).
  double profile_error = 0;
};

// A = (p_i . p_j), B = (p_i . p) for the target profile p of exponent `gamma` at time `images`;
// x = lstsq(A, B) in float64 (minimum norm where A is near singular), then scaled to sum to 1 as
// EDM2 does, so that the result is an average.
Solution solve_coefficients(const std::vector<Input>& inputs, double images, double gamma);

// What a reconstruction at one step uses.
struct Plan {
  int64_t step = 0;
  double images = 0;
  std::string config_yaml;          // of the snapshot at `step`
  std::vector<Snapshot> snapshots;  // those up to `step`, ascending
  std::vector<Input> inputs;
};

// The snapshots of `run_dir` up to `step` (default: the last snapshot), with the profiles whose
// sigma_rel is in `input_sigma_rels` (empty: every profile). Throws std::invalid_argument naming
// the run when it has no snapshot, and the step and the snapshot steps when `step` has none.
Plan plan_reconstruction(const std::string& run_dir, std::optional<int64_t> step,
                         const std::vector<double>& input_sigma_rels = {});

struct Reconstruction {
  double sigma_rel = 0;
  double gamma = 0;
  Solution solution;
  // The model's parameters (float32, the reconstructed average) then its buffers (as of the
  // snapshot at the plan's step), by name.
  std::vector<std::pair<std::string, at::Tensor>> model_state;
};

// One pass over the plan's snapshots for all `sigma_rels` (each in (0, kMaxSigmaRel), else
// std::invalid_argument). Throws SnapshotError on a corrupt snapshot.
std::vector<Reconstruction> reconstruct(const Plan& plan, const std::vector<double>& sigma_rels);

// The snapshot's config with no EMA rates: the config a reconstruction's checkpoint stores, so
// that `sample` and `eval` use the weights it holds.
std::string reconstruction_config_yaml(const std::string& snapshot_config_yaml);

}  // namespace difftrain::train::phema
