// AdamW (Loshchilov & Hutter) whose step is one fused multi-tensor kernel (at::_fused_adamw_, the
// kernel behind PyTorch's `AdamW(fused=True)`), and which a non-finite gradient skips on the
// device: the host never waits to learn whether a step was good.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

namespace torch::optim {
class AdamW;
}

namespace difftrain::train {

struct AdamW {
  // Parameters, hyper-parameters and the moments exp_avg / exp_avg_sq: what checkpoints store, in
  // LibTorch's own format.
  std::shared_ptr<torch::optim::AdamW> state;
  // Updates applied so far (for the bias corrections), float32 on the parameters' device. The
  // per-parameter step of `state` is written from it only for checkpoints (write_step_count).
  at::Tensor steps;
};

AdamW make_adamw(const std::vector<at::Tensor>& params, double lr, double weight_decay);

// One update of every parameter that has a gradient, at learning rate `lr`. `skip` (a 0-dim
// float32, 0 or 1, on the device) turns the update into a no-op, moments and step count included.
void adamw_step(AdamW& adam, double lr, const at::Tensor& skip);

// Checkpoint round trip: copy `steps` into the per-parameter state (a host sync) before saving,
// and back after loading.
void write_step_count(AdamW& adam);
void read_step_count(AdamW& adam);

}  // namespace difftrain::train
