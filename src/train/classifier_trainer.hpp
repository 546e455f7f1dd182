// `difftrain train-classifier`: the noisy classifier of classifier guidance, trained as
// guided-diffusion's classifier_train.py does: each image noised to x_t at a uniform timestep of
// the config's diffusion, cross-entropy on its label, AdamW, the gradients averaged over ranks.
// The loop is the diffusion trainer's, without what only a generative model has (EMA, timestep
// importance, loss scaling, samples).
#pragma once

#include <cstdint>
#include <string>

#include "train/config.hpp"
#include "train/trainer.hpp"

namespace difftrain::train {

// The config keys a classifier run reads that a diffusion run does not check: labels, a
// precision without loss scaling, uniform timesteps. Throws ConfigError naming the key.
void validate_for_classifier(const Config& config);

// Runs until training.max_steps / max_time / a stop signal, writing metrics.jsonl (loss and
// accuracy, overall and by quarter of the timesteps; held-out every logging.bpd_every steps on
// logging.bpd_batch images of data.validation) and checkpoints to logging.run_dir. `resume`: ""
// (afresh), "auto" or a checkpoint.
TrainResult train_classifier(const Config& config, Cluster& cluster, const std::string& resume);

}  // namespace difftrain::train
