// What `sample` and `eval` share: finding the checkpoint (--run / --checkpoint), rebuilding its
// model from the config stored in it, loading the chosen weights (raw or an EMA), and checking
// where the outputs go.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <optional>
#include <string>

#include "data/manifest.hpp"
#include "diffusion/bound.hpp"
#include "diffusion/schedule.hpp"
#include "model/unet.hpp"
#include "train/classifier.hpp"
#include "train/config.hpp"
#include "train/denoiser.hpp"
#include "train/setup.hpp"

namespace CLI {
class App;
}
namespace difftrain::parallel {
class World;
}

namespace difftrain::cli {

struct ModelSource {
  std::string run_dir;     // the newest valid checkpoint of <run_dir>/checkpoints ...
  std::string checkpoint;  // ... or this file
  // "" = the first EMA rate of the config (the raw weights when it has none); "none" = the raw
  // weights; else an EMA rate, e.g. "0.9999".
  std::string ema;
  // Where to run: auto | cpu | cuda | cuda:N, as the config key `device`
  // (parallel/rank_device.hpp). The training run's device does not matter: a checkpoint runs
  // anywhere.
  std::string device = "auto";
};

// --run, --checkpoint (one of them required), --ema and --device on a subcommand.
void add_model_source_options(CLI::App& cmd, ModelSource& source);
// --device alone (auto | cpu | cuda | cuda:N), checked as it is parsed.
void add_device_option(CLI::App& cmd, std::string& device);

struct TrainedModel {
  std::string checkpoint;
  int64_t step = 0;
  train::Config config;
  train::DataShape shape;                        // what the network sees (after data.pad_to)
  std::optional<data::Manifest> train_manifest;  // the config's data.train, when readable
  std::optional<double> ema_rate;                // the weights loaded; nullopt = raw weights
  train::Denoiser denoiser;                      // the network in eval mode, on `device`
  c10::Device device = c10::kCPU;
  diffusion::GaussianDiffusion diffusion;  // the training diffusion, tables on `device`
};

// Throws (a one-line message naming the file or key) when there is no checkpoint, it is invalid,
// the model cannot be sized, or the weights do not fit the config. The image shape comes from
// the config's data.train manifest; when that cannot be read, from model.image_size and
// model.in_channels, else from `fallback` (eval's --data) when given. `device`: this rank's
// (parallel::rank_device of source.device).
TrainedModel load_trained_model(const ModelSource& source, const c10::Device& device,
                                const data::Manifest* fallback = nullptr);
// As sample, eval and phema --sweep load it on every rank: on the rank's device (source.device,
// parallel::rank_device), with the training run's training.threads when it set them.
TrainedModel load_trained_model_on_rank(const ModelSource& source, const parallel::World& world,
                                        const data::Manifest* fallback = nullptr);

struct TrainedClassifier {
  std::string checkpoint;
  int64_t step = 0;
  train::Config config;
  train::DataShape shape;                  // the images it classifies; num_classes: its classes
  train::Classifier classifier;            // in eval mode, on the device it was loaded for
  diffusion::GaussianDiffusion diffusion;  // the one it was trained on, tables on the device
};

// A noisy classifier (difftrain train-classifier) from its run directory (the newest valid
// checkpoint) or a checkpoint file; throws naming the file when it is no classifier's.
TrainedClassifier load_trained_classifier(const std::string& run_or_checkpoint,
                                          const c10::Device& device);

// Creates the directory of `path` and checks that a file can be created in it (by creating and
// removing one: permission bits do not stop root), so that a long job does not fail at the end.
// Throws naming `what` (the path as the user gave it).
void check_output_directory(const std::string& path, const std::string& what);

// Refuses an output path named like a training checkpoint (RUN/checkpoints/ckpt_<step>.pt): it
// would replace one that exists, and `train --resume auto` would take the file for one.
void check_not_a_training_checkpoint(const std::string& path, const std::string& what);

// A short description for logs: "ckpt_000001000.pt (step 1000, EMA 0.9999)".
std::string describe(const TrainedModel& m);

}  // namespace difftrain::cli
