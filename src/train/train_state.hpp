// The training state, listed once: everything a step changes and a checkpoint holds. Restoring it
// continues a run bit-identically (randomness is keyed by step, so no generator state is needed).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "data/loader.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "model/unet.hpp"
#include "train/adamw.hpp"
#include "train/config.hpp"
#include "train/ema.hpp"
#include "train/loss_scaler.hpp"
#include "train/phema.hpp"
#include "train/setup.hpp"

namespace difftrain::parallel {
class Communicator;
}

namespace difftrain::train {

struct TrainState {
  model::UNet net{nullptr};  // on the run's device, channels-last when the config says so
  AdamW optimizer;
  std::vector<Ema> emas;  // one per training.ema_rates, in the parameters' order
  diffusion::TimestepSampler sampler;
  LossScaler scaler;              // fp16 only; disabled (scale 1) otherwise
  phema::PowerFunctionEma phema;  // post-hoc EMA profiles (training.phema); none when off
  int64_t step = 0;               // optimizer steps done
  data::Cursor cursor;            // the next global batch to read
};

// A fresh state on `device`: the network from `config.seed`, then rank 0's weights broadcast to
// every rank (so that every replica, and every EMA, starts from the same weights).
TrainState make_train_state(const Config& config, const DataShape& shape, const c10::Device& device,
                            parallel::Communicator& comm);

// Rank 0's parameters and buffers of `net` copied into every rank's, in place.
void broadcast_weights(torch::nn::Module& net, parallel::Communicator& comm);

// Every tensor of the state but the optimizer's, under its checkpoint key: model/<name> for
// parameters and buffers, ema/<i>/<j>, sampler/..., scaler/.... Checkpoints write and read
// exactly these (the optimizer through LibTorch's own format).
std::vector<std::pair<std::string, at::Tensor>> named_state_tensors(const TrainState& state);

// What must be identical on every rank after a step: the named tensors, the Adam moments, the
// step count and the post-hoc EMA profiles (the replica check fingerprints them).
std::vector<at::Tensor> replicated_tensors(const TrainState& state);

}  // namespace difftrain::train
