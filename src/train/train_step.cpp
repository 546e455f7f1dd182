#include "train/train_step.hpp"

#include <ATen/ATen.h>

#include <cmath>

#include "common/autocast_scope.hpp"
#include "common/host_to_device.hpp"
#include "data/loader.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_reducer.hpp"
#include "train/step_rng.hpp"
#include "train/train_state.hpp"

namespace difftrain::train {
namespace {

void phase_ended(const PhaseHook& hook, StepPhase phase) {
  if (hook) hook(phase);
}

// Rows [first_row, first_row + rows) of the global batch's labels after classifier-free
// guidance's label dropout.
at::Tensor drop_labels(const at::Tensor& labels, uint64_t seed, int64_t step, int64_t first_row,
                       int64_t global_batch, const LabelDropout& dropout) {
  if (dropout.p_uncond <= 0 || !labels.defined()) return labels;
  const at::Tensor u = at::rand(
      {global_batch}, cpu_generator(step_seed(seed, step, RngStream::label_dropout)), at::kDouble);
  const at::Tensor dropped =
      host_to_device(u.narrow(0, first_row, labels.size(0)).lt(dropout.p_uncond), labels.device());
  return at::where(dropped, at::full_like(labels, dropout.null_label), labels);
}

}  // namespace

StepInputs draw_step_inputs(uint64_t seed, int64_t step, const diffusion::TimestepSampler& sampler,
                            const data::Batch& batch, int64_t global_batch,
                            const LabelDropout& dropout, const LowResNoise& low_res_noise) {
  const int64_t b = batch.images.size(0);
  const c10::Device device = batch.images.device();
  const diffusion::TimestepDraw draw = diffusion::draw_timesteps(
      sampler, global_batch, cpu_generator(step_seed(seed, step, RngStream::timesteps)));
  const at::Tensor noise =
      step_noise(seed, step, batch.row_offset, b, batch.images.sizes().slice(1));
  StepInputs in{batch.images,
                draw.t.narrow(0, batch.row_offset, b),
                draw.weights.narrow(0, batch.row_offset, b),
                host_to_device(noise, device),
                drop_labels(batch.labels, seed, step, batch.row_offset, global_batch, dropout),
                {},
                {}};
  if (low_res_noise.max_level >= 0) {
    const int64_t C = batch.images.size(1), L = low_res_noise.size;
    at::Tensor levels = at::empty({b}, at::kLong), eps = at::empty({b, C, L, L}, at::kFloat);
    for (int64_t i = 0; i < b; ++i) {
      at::Generator g = cpu_generator(step_seed(seed, step, RngStream::low_res_noise,
                                                static_cast<uint64_t>(batch.row_offset + i)));
      levels.select(0, i).random_(0, low_res_noise.max_level + 1, g);
      eps.select(0, i).normal_(0.0, 1.0, g);
    }
    in.low_res_t = host_to_device(levels, device);
    in.low_res_noise = host_to_device(eps, device);
  }
  return in;
}

std::vector<at::Tensor> grads_of(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  return grads;
}

at::Tensor global_grad_norm(const std::vector<at::Tensor>& grads, const c10::Device& device) {
  if (grads.empty()) return at::zeros({}, at::TensorOptions(device).dtype(at::kFloat));
  return at::stack(at::_foreach_norm(grads)).to(at::kFloat).norm();
}

double learning_rate(const TrainingConfig& t, int64_t step) {
  double lr = t.lr;
  if (t.warmup_steps > 0) lr *= std::min(1.0, static_cast<double>(step + 1) / t.warmup_steps);
  if (t.lr_anneal_steps > 0)
    lr *= std::max(0.0, 1.0 - static_cast<double>(step) / t.lr_anneal_steps);
  return lr;
}

StepTerms forward_backward(const StepContext& c, const StepInputs& in, const at::Tensor& loss_scale,
                           bool nan_loss, const PhaseHook& on_phase_end) {
  const int64_t b = in.x_start.size(0);
  const int64_t micro = c.training.microbatch > 0 ? c.training.microbatch : b;
  const Precision precision = c.training.precision;
  const auto f64 = in.x_start.options().dtype(at::kDouble);
  StepTerms out{at::empty({b}, f64), at::empty({b}, f64), at::empty({b}, f64), at::empty({b}, f64)};
  for (int64_t m0 = 0; m0 < b; m0 += micro) {
    if (c.reducer) c.reducer->set_sync(m0 + micro >= b);
    const at::Tensor x0 = in.x_start.narrow(0, m0, micro), t = in.t.narrow(0, m0, micro),
                     eps = in.noise.narrow(0, m0, micro);
    const at::Tensor y = in.labels.defined() ? in.labels.narrow(0, m0, micro) : at::Tensor();
    const at::Tensor x_t = diffusion::q_sample(c.diffusion, x0, t, eps);
    // An upsampler's input: x_0 downsampled, for noise conditioning augmentation noised as the
    // forward process would at the sample's level.
    at::Tensor low_res = c.denoiser.low_res_of(x0), low_res_t;
    if (in.low_res_t.defined()) {
      low_res_t = in.low_res_t.narrow(0, m0, micro);
      low_res = diffusion::q_sample(c.diffusion, low_res, low_res_t,
                                    in.low_res_noise.narrow(0, m0, micro));
    }
    at::Tensor model_output;
    {
      AutocastScope autocast(x0.device().type(), precision != Precision::fp32,
                             precision == Precision::bf16 ? at::kBFloat16 : at::kHalf);
      model_output = c.denoiser(x_t, t, y, low_res, low_res_t);
    }
    auto terms = diffusion::training_terms(c.diffusion, c.loss, model_output.to(at::kFloat), x0,
                                           x_t, t, eps);
    if (nan_loss) terms.loss = terms.loss * NAN;
    // The importance weight 1/(T p(t)) multiplies the whole per-sample loss (the weighting w(t)
    // is inside terms.loss already). Dividing by the rank's batch (not the microbatch) makes the
    // microbatches average.
    at::Tensor loss = (terms.loss * in.weights.narrow(0, m0, micro)).sum() / static_cast<double>(b);
    if (loss_scale.defined()) loss = loss * loss_scale;
    phase_ended(on_phase_end, StepPhase::forward);
    loss.backward();
    phase_ended(on_phase_end, StepPhase::backward);
    out.loss.narrow(0, m0, micro).copy_(terms.loss.detach());
    out.mse.narrow(0, m0, micro).copy_(terms.mse.detach());
    out.vb.narrow(0, m0, micro).copy_(terms.vb.detach());
    out.weighted_mse.narrow(0, m0, micro).copy_(terms.weighted_mse.detach());
  }
  return out;
}

StepResult train_step(TrainState& s, const StepContext& c, const StepInputs& in,
                      const PhaseHook& on_phase_end, bool nan_loss) {
  const std::vector<at::Tensor> params = s.net->parameters();
  StepResult r;

  // Forward and backward; the gradients are all-reduced bucket by bucket as backward produces them.
  if (c.reducer)
    c.reducer->zero_grad();
  else
    s.optimizer.state->zero_grad();
  r.terms = forward_backward(c, in, s.scaler.enabled ? s.scaler.scale : at::Tensor(), nan_loss,
                             on_phase_end);
  if (c.reducer) c.reducer->finish();
  // Every rank records the whole global batch, in global order, so that the samplers stay equal.
  if (diffusion::records_losses(s.sampler))
    diffusion::record_losses(s.sampler, c.comm.all_gather(in.t), c.comm.all_gather(r.terms.loss));
  phase_ended(on_phase_end, StepPhase::all_reduce);

  // The update. The gradients are the ranks' average already, so every rank takes the same skip
  // decision, on the device: a non-finite norm, or an fp16 overflow.
  const std::vector<at::Tensor> grads = grads_of(params);
  const at::Tensor overflow = unscale_and_update(s.scaler, grads);
  r.grad_norm = global_grad_norm(grads, in.x_start.device());
  r.skipped = at::logical_or(overflow.to(at::kBool), at::isfinite(r.grad_norm).logical_not())
                  .to(at::kFloat);
  if (c.training.grad_clip > 0)
    at::_foreach_mul_(grads, (c.training.grad_clip / (r.grad_norm + 1e-6)).clamp_max(1.0));
  adamw_step(s.optimizer, learning_rate(c.training, s.step), r.skipped);
  phase_ended(on_phase_end, StepPhase::optimizer);
  update_emas(s.emas, params, s.step, c.training.ema_warmup, r.skipped);
  phema::update(s.phema, params, c.training.batch_size, r.skipped);
  phase_ended(on_phase_end, StepPhase::ema);
  ++s.step;
  return r;
}

}  // namespace difftrain::train
