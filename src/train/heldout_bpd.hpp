// The bits/dim estimate the trainer logs every logging.bpd_every steps: a fixed batch of held-out
// images (the first global batch of data.validation, split across ranks like training batches)
// and the stratified estimator of diffusion/bpd_estimate.hpp (each image its own timestep per
// stratum). The timesteps and noise are drawn from a fixed seed, so successive estimates differ
// only by the weights (common random numbers: the trend is not buried in sampling noise), and
// they do not depend on the number of ranks.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "diffusion/schedule.hpp"
#include "train/config.hpp"
#include "train/denoiser.hpp"
#include "train/setup.hpp"

namespace difftrain::parallel {
class Communicator;
}

namespace difftrain::train {

struct HeldOutBatch {
  at::Tensor images;  // [b, C, H, W] this rank's rows of the fixed batch, on the device
  at::Tensor labels;  // [b] or undefined
  int64_t global_size = 0, row_offset = 0;
};

// The first global batch of `count` images of `manifest_path` in the training loader's order (the
// config's seed), this rank's rows: ConfigError naming `key` when the images have another shape
// than the training data's, naming `count_key` when they are fewer than `count`.
HeldOutBatch read_fixed_batch(const Config& config, const DataShape& shape,
                              const std::string& manifest_path, const std::string& key,
                              int64_t count, const std::string& count_key, int rank, int world,
                              const c10::Device& device);

// Reads logging.bpd_batch images of data.validation (throws data::Error naming the file when it
// is unreadable, ConfigError when its images have another shape than the training data's).
HeldOutBatch read_heldout_batch(const Config& config, const DataShape& shape, int rank, int world,
                                const c10::Device& device);

struct HeldOutBpd {
  double bpd = 0;             // mean over the batch of the unbiased estimate of the full bound
  double standard_error = 0;  // of that mean, over images
  double prior_bpd = 0;
  int64_t images = 0, timesteps = 0;
};

// Runs in eval mode without gradients (the module's training mode is restored), on the raw
// weights; every rank gets the same result (one all-reduce).
HeldOutBpd estimate_heldout_bpd(const Denoiser& denoiser,
                                const diffusion::GaussianDiffusion& diffusion, const Config& config,
                                const HeldOutBatch& batch, parallel::Communicator& comm);

}  // namespace difftrain::train
