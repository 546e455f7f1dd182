#include "train/train_step.hpp"

#include <ATen/ATen.h>

#include <cmath>

#include "diffusion/gaussian_diffusion.hpp"
#include "model/unet.hpp"
#include "parallel/grad_reducer.hpp"
#include "train/autocast_scope.hpp"

namespace difftrain::train {

StepTerms forward_backward(model::UNetImpl& net, const diffusion::GaussianDiffusion& diffusion,
                           const diffusion::LossSpec& loss_spec, const StepInputs& in,
                           const StepSettings& s, parallel::GradReducer* reducer, bool nan) {
  const int64_t b = in.x_start.size(0);
  const int64_t micro = s.microbatch > 0 ? s.microbatch : b;
  StepTerms out;
  const auto f64 = in.x_start.options().dtype(at::kDouble);
  out.loss = at::empty({b}, f64);
  out.mse = at::empty({b}, f64);
  out.vb = at::empty({b}, f64);
  out.weighted_mse = at::empty({b}, f64);
  for (int64_t m0 = 0; m0 < b; m0 += micro) {
    if (reducer) reducer->set_sync(m0 + micro >= b);
    const at::Tensor x0 = in.x_start.narrow(0, m0, micro), t = in.t.narrow(0, m0, micro),
                     eps = in.noise.narrow(0, m0, micro);
    const at::Tensor y = in.labels.defined() ? in.labels.narrow(0, m0, micro) : at::Tensor();
    const at::Tensor x_t = diffusion::q_sample(diffusion, x0, t, eps);
    at::Tensor model_output;
    {
      AutocastScope scope(x0.device().type(), s.autocast, s.autocast_dtype);
      model_output = net.forward(x_t, t.to(at::kFloat) * s.timestep_scale, y);
    }
    auto terms = diffusion::training_terms(diffusion, loss_spec, model_output.to(at::kFloat), x0,
                                           x_t, t, eps);
    if (nan) terms.loss = terms.loss * NAN;
    // The importance weight 1/(T p(t)) multiplies the whole per-sample loss (the weighting w(t)
    // is inside terms.loss already). Dividing by the rank's batch (not the microbatch) makes the
    // microbatches average.
    at::Tensor loss = (terms.loss * in.weights.narrow(0, m0, micro)).sum() / static_cast<double>(b);
    if (s.loss_scale.defined()) loss = loss * s.loss_scale;
    loss.backward();
    out.loss.narrow(0, m0, micro).copy_(terms.loss.detach());
    out.mse.narrow(0, m0, micro).copy_(terms.mse.detach());
    out.vb.narrow(0, m0, micro).copy_(terms.vb.detach());
    out.weighted_mse.narrow(0, m0, micro).copy_(terms.weighted_mse.detach());
  }
  return out;
}

}  // namespace difftrain::train
