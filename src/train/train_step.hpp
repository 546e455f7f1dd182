// The forward and backward passes of one training step on this rank's rows: microbatches
// accumulate gradients that average (not sum) to the gradient of the rank's batch mean.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "diffusion/schedule.hpp"

namespace torch::nn {
class Module;
}
namespace difftrain::model {
class UNetImpl;
}
namespace difftrain::parallel {
class GradReducer;
}

namespace difftrain::train {

struct StepInputs {
  at::Tensor x_start;  // [b, C, H, W]
  at::Tensor t;        // [b] int64
  at::Tensor weights;  // [b] importance weights of t
  at::Tensor noise;    // [b, C, H, W]
  at::Tensor labels;   // [b] int64, or undefined
};

struct StepTerms {  // per sample, without the importance weights, detached
  at::Tensor loss, mse, vb;
  at::Tensor weighted_mse;  // w(t) * mse, the simple term as it enters loss (= mse for none)
};

struct StepSettings {
  int64_t microbatch = 0;     // 0 = the whole batch at once
  double timestep_scale = 1;  // the network sees t * timestep_scale
  bool autocast = false;
  at::ScalarType autocast_dtype = at::kBFloat16;
  at::Tensor loss_scale;  // fp16: backward runs on loss * loss_scale; undefined = 1
};

// Accumulates into the parameters' .grad(): with a reducer, only the last microbatch
// communicates. The injected `nan` makes every loss NaN (a fault for tests).
StepTerms forward_backward(model::UNetImpl& net, const diffusion::GaussianDiffusion& diffusion,
                           const diffusion::LossSpec& loss_spec, const StepInputs& in,
                           const StepSettings& settings, parallel::GradReducer* reducer,
                           bool nan = false);

}  // namespace difftrain::train
