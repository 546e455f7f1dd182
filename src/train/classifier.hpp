// The noisy classifier of classifier guidance (Dhariwal & Nichol 2021, sec. 4): guided-diffusion's
// EncoderUNet trained on x_t at every timestep of the training diffusion, and the gradient of its
// log p(y | x_t) that guides a sampler. Trained by train_classifier (classifier_trainer.hpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "data/loader.hpp"
#include "diffusion/sampling.hpp"
#include "model/encoder_unet.hpp"
#include "train/adamw.hpp"
#include "train/config.hpp"
#include "train/setup.hpp"

namespace difftrain::parallel {
class Communicator;
}

namespace difftrain::train {

struct Classifier {
  model::EncoderUNet net{nullptr};
  double timestep_scale = 1.0;  // as the Denoiser's: the network sees t * timestep_scale

  // x_t [N, C, H, W], t [N] int64 timesteps of the training diffusion -> logits [N, classes].
  at::Tensor logits(const at::Tensor& x_t, const at::Tensor& t) const;
  // guided-diffusion's cond_fn: scale * grad_{x_t} log softmax(logits(x_t, t))[y], computed with
  // autograd on also where the caller samples under InferenceMode; detached, in x_t's dtype. y [N]
  // int64 class labels.
  diffusion::GuidanceFn guidance(const at::Tensor& y, double scale) const;
};

// The classifier a config describes: the model section's architecture (model.pool included),
// data.class_conditional's classes as the logits; throws ConfigError naming the key.
model::UNetConfig classifier_unet_config(const Config& config, const DataShape& shape);
// The config's timestep scale, as make_denoiser's.
Classifier make_classifier(model::EncoderUNet net, const Config& config);

// Everything a classifier's training step changes and its checkpoint holds (no EMA: the
// classifier's weights are used as trained, as guided-diffusion's classifier_train.py does).
struct ClassifierState {
  model::EncoderUNet net{nullptr};
  AdamW optimizer;
  int64_t step = 0;
  data::Cursor cursor;
};

// Fresh weights from config.seed on `device`, rank 0's broadcast to every rank.
ClassifierState make_classifier_state(const Config& config, const DataShape& shape,
                                      const c10::Device& device, parallel::Communicator& comm);

}  // namespace difftrain::train
