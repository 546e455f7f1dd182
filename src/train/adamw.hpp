// AdamW (Loshchilov & Hutter) whose step is one fused multi-tensor kernel (at::_fused_adamw_, the
// kernel behind PyTorch's `AdamW(fused=True)`), and which a non-finite gradient skips on the
// device: the host never waits to learn whether a step was good.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
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
  std::vector<std::string> names;  // of the parameters, in order, for errors (may be empty)
};

AdamW make_adamw(const std::vector<at::Tensor>& params, double lr, double weight_decay,
                 std::vector<std::string> names = {});

// One update of every parameter that has a gradient, at learning rate `lr`. `skip` (a 0-dim
// float32, 0 or 1, on the device) turns the update into a no-op, moments and step count included.
// The fused kernel walks a parameter and its gradient with one index, so a gradient laid out in
// memory unlike its parameter (a channels-first gradient of a channels-last weight) would update
// each weight with another element's gradient: that is a std::logic_error naming the parameter.
void adamw_step(AdamW& adam, double lr, const at::Tensor& skip);

// Checkpoint round trip: copy `steps` into the per-parameter state (a host sync) before saving;
// after loading, copy it back and give the moments their parameter's device and memory layout.
void write_step_count(const AdamW& adam);  // the moments live behind the shared optimizer
void read_step_count(AdamW& adam);

}  // namespace difftrain::train
