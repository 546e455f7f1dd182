// One training step, as data flows: the step's inputs for this rank's rows of the global batch
// (timesteps, importance weights, noise) -> forward and backward per microbatch, the gradients
// averaged over ranks in buckets while backward runs -> the timestep sampler records the global
// batch's losses -> the optimizer update, skipped on the device when the gradients are not finite
// -> the EMAs. The trainer and the benchmark both run exactly this; nothing in it waits for the
// device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "diffusion/schedule.hpp"
#include "diffusion/types.hpp"
#include "train/denoiser.hpp"

namespace difftrain::data {
struct Batch;
}
namespace difftrain::diffusion {
struct TimestepSampler;
}
namespace difftrain::parallel {
class Communicator;
class GradReducer;
}  // namespace difftrain::parallel

namespace difftrain::train {

struct TrainingConfig;
struct TrainState;

struct StepInputs {
  at::Tensor x_start;  // [b, C, H, W]
  at::Tensor t;        // [b] int64
  at::Tensor weights;  // [b] importance weights 1 / (T p(t))
  at::Tensor noise;    // [b, C, H, W]
  at::Tensor labels;   // [b] int64, or undefined
  // A noise-conditioned upsampler's: the levels its low-resolution inputs are noised to, [b]
  // int64, and that noise, [b, C, low_res_size, low_res_size]; both undefined for other models.
  at::Tensor low_res_t{};
  at::Tensor low_res_noise{};
};

// Classifier-free guidance's training (Ho & Salimans 2022, Algorithm 1): each sample's label is
// replaced by the null label with probability p_uncond.
struct LabelDropout {
  double p_uncond = 0.0;   // training.p_uncond; 0 = labels as they are
  int64_t null_label = 0;  // the model's num_classes: label_emb's extra row
};

// Noise conditioning augmentation's draws (model.low_res_noise): each sample's level, uniform over
// the timesteps 0 .. max_level, and its noise for the low-resolution image.
struct LowResNoise {
  int64_t max_level = -1;  // -1 = not a noise-conditioned upsampler
  int64_t size = 0;        // model.low_res_size
};

// The inputs of step `step` for this rank's rows of `batch`: the timesteps of the whole global
// batch drawn from the sampler (every rank alike: stratified draws span the global batch), the
// noise of this rank's rows, each row from its own generator, and the labels after `dropout`,
// whose draws also span the global batch; and a noise-conditioned upsampler's levels and noise,
// each row from its own generator. Keyed by (seed, step): a resumed run needs no generator state,
// and the draws do not depend on the number of ranks.
StepInputs draw_step_inputs(uint64_t seed, int64_t step, const diffusion::TimestepSampler& sampler,
                            const data::Batch& batch, int64_t global_batch,
                            const LabelDropout& dropout = {},
                            const LowResNoise& low_res_noise = {});

// What a step needs besides the state.
struct StepContext {
  Denoiser denoiser;
  const diffusion::GaussianDiffusion& diffusion;
  diffusion::LossSpec loss;
  const TrainingConfig& training;  // microbatch, precision, learning rate, clipping, EMA warm-up
  parallel::Communicator& comm;
  parallel::GradReducer* reducer = nullptr;  // none: gradients stay this process's own
};

struct StepTerms {  // per sample, without the importance weights, detached, float64
  at::Tensor loss, mse, vb;
  at::Tensor weighted_mse;  // w(t) * mse, the simple term as it enters loss (= mse for none)
};

struct StepResult {      // device tensors: reading them on the host waits for the step
  StepTerms terms;       // this rank's samples
  at::Tensor grad_norm;  // 0-dim float32: the global gradient norm, before clipping
  at::Tensor skipped;    // 0-dim float32: 1 when the update was not applied
};

// The phases of a step, for benchmarks that time them (the trainer passes no hook).
enum class StepPhase { forward, backward, all_reduce, optimizer, ema };
using PhaseHook = std::function<void(StepPhase ended)>;

// The gradients of those of `params` that have one.
std::vector<at::Tensor> grads_of(const std::vector<at::Tensor>& params);
// The global L2 norm of `grads`, float32 on the device (no host synchronisation).
at::Tensor global_grad_norm(const std::vector<at::Tensor>& grads, const c10::Device& device);

// training.lr with its linear warm-up and linear annealing, at optimizer step `step`.
double learning_rate(const TrainingConfig& training, int64_t step);

// One step on `state`; `nan_loss` makes every loss NaN (a fault for tests).
StepResult train_step(TrainState& state, const StepContext& context, const StepInputs& in,
                      const PhaseHook& on_phase_end = {}, bool nan_loss = false);

// Forward and backward over this rank's rows, microbatch by microbatch: the gradients accumulate
// in .grad() and average (not sum) to the gradient of the rank's batch mean; with a reducer only
// the last microbatch communicates. `loss_scale`: fp16 backward runs on loss * loss_scale
// (undefined = 1).
StepTerms forward_backward(const StepContext& context, const StepInputs& in,
                           const at::Tensor& loss_scale = {}, bool nan_loss = false,
                           const PhaseHook& on_phase_end = {});

}  // namespace difftrain::train
