#include "train/adamw.hpp"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <memory>

namespace difftrain::train {
namespace {

torch::optim::AdamWParamState& state_of(torch::optim::AdamW& optimizer, const at::Tensor& p) {
  auto& slot = optimizer.state()[p.unsafeGetTensorImpl()];
  if (!slot) {  // LibTorch creates state lazily in its own step(), which is not used here
    auto s = std::make_unique<torch::optim::AdamWParamState>();
    s->step(0);
    s->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
    s->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
    slot = std::move(s);
  }
  return static_cast<torch::optim::AdamWParamState&>(*slot);
}

const torch::optim::AdamWOptions& options_of(torch::optim::AdamW& optimizer) {
  return static_cast<const torch::optim::AdamWOptions&>(optimizer.param_groups().front().options());
}

}  // namespace

AdamW make_adamw(const std::vector<at::Tensor>& params, double lr, double weight_decay) {
  AdamW adam{std::make_shared<torch::optim::AdamW>(
                 params, torch::optim::AdamWOptions(lr).weight_decay(weight_decay)),
             {}};
  const auto device = params.empty() ? at::Device(at::kCPU) : params.front().device();
  adam.steps = at::zeros({}, at::TensorOptions(device).dtype(at::kFloat));
  return adam;
}

void adamw_step(AdamW& adam, double lr, const at::Tensor& skip) {
  std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
  for (auto& group : adam.state->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);  // saved with checkpoints
    for (const at::Tensor& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& s = state_of(*adam.state, p);
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(s.exp_avg());
      exp_avg_sqs.push_back(s.exp_avg_sq());
      steps.push_back(adam.steps);  // one count for all: every parameter updates together
    }
  }
  if (params.empty()) return;
  const auto& o = options_of(*adam.state);
  // The kernel reads the step count after the increment; a skipped step takes it back, as
  // PyTorch's GradScaler does with fused optimizers.
  adam.steps.add_(1.0);
  at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr,
                    std::get<0>(o.betas()), std::get<1>(o.betas()), o.weight_decay(), o.eps(),
                    /*amsgrad=*/false, /*maximize=*/false, /*grad_scale=*/std::nullopt,
                    /*found_inf=*/skip);
  adam.steps.sub_(skip);
}

void write_step_count(AdamW& adam) {
  const auto n = static_cast<int64_t>(adam.steps.item<float>());
  for (auto& group : adam.state->param_groups())
    for (const at::Tensor& p : group.params())
      state_of(*adam.state, p).step(n);
}

void read_step_count(AdamW& adam) {
  for (auto& group : adam.state->param_groups())
    for (const at::Tensor& p : group.params()) {
      const auto it = adam.state->state().find(p.unsafeGetTensorImpl());
      if (it == adam.state->state().end()) continue;
      const auto& s = static_cast<const torch::optim::AdamWParamState&>(*it->second);
      adam.steps.fill_(static_cast<double>(s.step()));
      return;
    }
}

}  // namespace difftrain::train
