// Checkpoints: one file per save holding everything a bit-identical resume needs (model, every
// EMA, optimizer, timestep-sampler history, loss scaler, data cursor, step, resolved config).
// The file is a LibTorch archive followed by a trailer (magic, format version, size, CRC-32); it
// is written to a temporary name and renamed, so a kill never leaves a torn checkpoint.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "train/train_state.hpp"

namespace torch::nn {
class Module;
}

namespace difftrain::train {

inline constexpr uint32_t kCheckpointFormatVersion = 1;

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Writes the whole training state and the run's resolved config to `path` (a temporary file
// renamed into place; when the write fails, the temporary file is removed and an older
// checkpoint stays as it was). `imported_from`: the weight file of a checkpoint that
// `difftrain import` made ("" otherwise).
void save_checkpoint(const std::string& path, const TrainState& state,
                     const std::string& config_yaml, const std::string& imported_from = "");
// Loads into the live state; shapes must match (a checkpoint from another config is an error
// naming the first mismatching tensor). Without `sampler_history` the timestep sampler keeps its
// fresh state: the loss history of another objective says nothing about this one.
void load_checkpoint(const std::string& path, TrainState& state, bool sampler_history = true);

struct ClassifierState;
// A noisy classifier's training state (train/classifier.hpp: weights, AdamW, step, data cursor)
// in the same file format, marked kind "classifier" so that a classifier and a diffusion model
// are never loaded as each other.
void save_classifier_checkpoint(const std::string& path, const ClassifierState& state,
                                const std::string& config_yaml,
                                const std::string& imported_from = "");
void load_classifier_checkpoint(const std::string& path, ClassifierState& state);

// Checks the trailer and CRC without loading. Returns an empty string when valid, else why not.
std::string checkpoint_problem(const std::string& path);
// Reads only the stored config and step (for `sample` / `eval` and for error messages).
struct CheckpointInfo {
  int64_t step = 0;
  std::string config_yaml;
  std::string imported_from;       // see save_checkpoint
  std::string kind = "diffusion";  // or "classifier"
};
// Throws CheckpointError unless `info` (of `path`) is of `kind`, saying what the file is for.
void require_kind(const CheckpointInfo& info, const std::string& path, const std::string& kind);
CheckpointInfo read_checkpoint_info(const std::string& path);
// A checkpoint of model weights alone (`model_state`: the model's parameters and buffers by
// name), at `step` with `config_yaml` stored: what `difftrain phema` writes. `sample` and `eval`
// load it through --checkpoint (with a config without EMA rates, the weights it holds are the ones
// used); training cannot resume from it.
void save_weights_checkpoint(const std::string& path,
                             const std::vector<std::pair<std::string, at::Tensor>>& model_state,
                             int64_t step, const std::string& config_yaml);
// Reads the model weights (or the EMA weights at `ema_rate`) into `model`.
void load_model_weights(const std::string& path, torch::nn::Module& model,
                        std::optional<double> ema_rate = std::nullopt);

// <run_dir>/checkpoints/ckpt_<step>.pt
std::string checkpoint_path(const std::string& run_dir, int64_t step);
// The step of a file named as checkpoint_path() names one; nullopt for another name.
std::optional<int64_t> checkpoint_step(const std::string& path);
// Every checkpoint of a run, newest first.
std::vector<std::string> list_checkpoints(const std::string& run_dir);
// The newest checkpoint that passes checkpoint_problem(); invalid ones are skipped with a warning.
std::optional<std::string> latest_valid_checkpoint(const std::string& run_dir);
// The checkpoint `difftrain train --resume` names: "" (start afresh), "auto" (the newest valid
// checkpoint of run_dir, "" when there is none) or a file.
std::string checkpoint_to_resume(const std::string& resume, const std::string& run_dir);

// Deletes all but the newest `keep` checkpoints up to `step` (the one just written); later ones
// are not this run's and are left alone.
void prune_checkpoints(const std::string& run_dir, int64_t keep, int64_t step);
// Moves the checkpoints after `step` into <run_dir>/checkpoints/superseded_at_step_<step>/ (a
// fresh folder each time), never deleting one: at the start of a run they are another run's (a
// fresh start in a used run_dir), the steps a resume from an earlier checkpoint is about to train
// again, or newer files --resume auto skipped as invalid. Left in place, --resume auto and
// `sample --run` would take them over this run's. Warns, naming the folder, and returns it (""
// when there was none).
std::string set_aside_checkpoints_after(const std::string& run_dir, int64_t step);
// `dir`/superseded_at_step_<step>, with a suffix _2, _3, ... when that exists already.
std::string superseded_folder(const std::string& dir, int64_t step);

}  // namespace difftrain::train
