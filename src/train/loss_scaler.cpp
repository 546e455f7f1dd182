#include "train/loss_scaler.hpp"

#include <ATen/ATen.h>

#include <string>

namespace difftrain::train {

LossScaler make_loss_scaler(bool enabled, double init_scale, int64_t growth_interval,
                            double min_scale, const c10::Device& device) {
  LossScaler s;
  s.enabled = enabled;
  s.scale = at::full({1}, enabled ? init_scale : 1.0, at::TensorOptions(device).dtype(at::kFloat));
  s.growth_tracker = at::zeros({1}, at::TensorOptions(device).dtype(at::kInt));
  s.growth_interval = growth_interval;
  s.min_scale = min_scale;
  return s;
}

at::Tensor unscale_and_update(LossScaler& s, const std::vector<at::Tensor>& grads) {
  at::Tensor found_inf = at::zeros({}, s.scale.options());
  if (!s.enabled) return found_inf;
  std::vector<at::Tensor> defined;
  for (const auto& g : grads)
    if (g.defined()) defined.push_back(g);
  at::_amp_foreach_non_finite_check_and_unscale_(defined, found_inf, s.scale.reciprocal());
  at::_amp_update_scale_(s.scale, s.growth_tracker, found_inf, s.growth_factor, s.backoff_factor,
                         s.growth_interval);
  return found_inf;
}

void check_loss_scale(const LossScaler& s) {
  const float scale = s.scale.item<float>();
  if (s.enabled && scale < s.min_scale)
    throw LossScaleCollapsed("fp16 loss scale fell to " + std::to_string(scale) +
                             ", below training.loss_scale_min = " + std::to_string(s.min_scale) +
                             ": the gradients keep overflowing; lower the learning rate or use "
                             "bf16");
}

}  // namespace difftrain::train
