// Post-hoc EMA snapshots: the tracked profiles (train/phema.hpp) as they are after a step, one
// file per step under RUN_DIR/phema/, read back one tensor at a time by the reconstruction.
//
// A profile is stored in float16, as EDM2 stores its snapshots: averaged weights are small
// numbers, far inside float16's range, and float16's 11-bit significand rounds them 8 times more
// finely than bfloat16's 8 bits; the reconstruction adds snapshots with coefficients of both signs
// and magnitudes above 1, which would magnify the coarser rounding. A tensor that float16 cannot
// hold (a value beyond 65504) is stored in float32. Buffers are stored as they are.
//
// File layout (little-endian): "DTPHEMA1", u64 header size, the header (JSON: step, images,
// profiles, config, and each tensor's name, profile, dtype and shape), the tensors' bytes in
// header order, then a trailer: u32 CRC-32 of everything before it, u32 format version, u64
// offset of the trailer, "DTPHEMA1". Files are written to a temporary name and renamed, so a kill
// never leaves a torn snapshot.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "train/phema.hpp"

namespace torch::nn {
class Module;
}

namespace difftrain::train::phema {

inline constexpr uint32_t kSnapshotFormatVersion = 1;

struct SnapshotError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct SnapshotTensor {
  std::string name;      // the model's name for the parameter or buffer
  int64_t profile = -1;  // the profile it belongs to; -1 for a buffer (copied, not averaged)
  at::ScalarType dtype = at::kHalf;
  std::vector<int64_t> shape;
};

// A snapshot file's header.
struct Snapshot {
  std::string path;
  int64_t step = 0;
  double images = 0;                       // t: the profiles' training time
  std::vector<double> sigma_rels, gammas;  // of the profiles, in profile order
  std::string config_yaml;                 // the run's resolved config
  std::vector<SnapshotTensor> tensors;     // in file order
  uint64_t data_offset = 0;
};

// RUN_DIR/phema and RUN_DIR/phema/snapshot_<step, 9 digits>.phema
std::string snapshot_dir(const std::string& run_dir);
std::string snapshot_path(const std::string& run_dir, int64_t step);

// Writes the snapshot of `step` (rank 0; a no-op without profiles or before any step). The
// parameter names come from `model`, whose parameters the profiles follow in order; its buffers
// are stored alongside.
void write_snapshot(const std::string& run_dir, int64_t step, const PowerFunctionEma& ema,
                    const torch::nn::Module& model, const std::string& config_yaml);

// Reads a header, checking the layout (magics, sizes) but not yet the checksum. Throws
// SnapshotError naming the file.
Snapshot read_snapshot(const std::string& path);
// Every snapshot of a run by ascending step; a file that fails read_snapshot is skipped with a
// warning.
std::vector<Snapshot> list_snapshots(const std::string& run_dir);
// Moves the snapshots after `step` into superseded_at_step_<step>/ of the snapshot folder (as
// train::set_aside_checkpoints_after): on a resume (or a fresh start, step 0) they belong to steps
// that are about to be trained again, or to another run. Returns how many.
int set_aside_snapshots_after(const std::string& run_dir, int64_t step);

// Streams the tensors in file order, each a CPU tensor of its stored dtype, holding one at a time,
// and checks the CRC-32 at the end: SnapshotError when it does not match.
void for_each_tensor(const Snapshot& snapshot,
                     const std::function<void(const SnapshotTensor&, const at::Tensor&)>& visit);

}  // namespace difftrain::train::phema
