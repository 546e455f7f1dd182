// Dynamic loss scaling for fp16 training (as torch.cuda.amp.GradScaler): the loss is multiplied
// by `scale` before backward; gradients are unscaled before the optimizer step; a step whose
// gradients hold inf/NaN is skipped and the scale halved; after growth_interval good steps in a
// row the scale doubles. Disabled (scale 1, never skips) for fp32 and bf16.
#pragma once

#include <ATen/core/Tensor.h>

#include <stdexcept>
#include <vector>

namespace difftrain::train {

struct LossScaleCollapsed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct LossScaler {
  bool enabled = false;
  at::Tensor scale;           // [1] float32
  at::Tensor growth_tracker;  // [1] int32, good steps in a row
  int64_t growth_interval = 2000;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  double min_scale = 1.0;
};

LossScaler make_loss_scaler(bool enabled, double init_scale, int64_t growth_interval,
                            double min_scale, const c10::Device& device);

// Unscales the gradients in place and updates the scale, on the device. Returns found_inf: a 0-dim
// float32, 1 when the step must be skipped (non-finite gradients), always 0 when disabled.
at::Tensor unscale_and_update(LossScaler& s, const std::vector<at::Tensor>& grads);

// Throws LossScaleCollapsed when the scale has fallen below min_scale: training has diverged, and
// going on would only train on garbage. Reads the scale (a host sync): call it when logging.
void check_loss_scale(const LossScaler& s);

}  // namespace difftrain::train
