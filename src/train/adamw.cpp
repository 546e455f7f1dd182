#include "train/adamw.hpp"

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <memory>
#include <stdexcept>
#include <string>

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

// Whether one flat index walks both tensors through the same elements: same sizes, both dense,
// and the same strides wherever a dimension has more than one element.
bool same_memory_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || !a.is_non_overlapping_and_dense() ||
      !b.is_non_overlapping_and_dense())
    return false;
  for (int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

std::string describe_layout(const at::Tensor& t) {
  return "sizes " + c10::str(t.sizes()) + " strides " + c10::str(t.strides());
}

std::string name_of(const AdamW& adam, std::size_t i) {
  return i < adam.names.size() ? "'" + adam.names[i] + "'" : std::to_string(i);
}

const torch::optim::AdamWOptions& options_of(torch::optim::AdamW& optimizer) {
  return static_cast<const torch::optim::AdamWOptions&>(optimizer.param_groups().front().options());
}

}  // namespace

AdamW make_adamw(const std::vector<at::Tensor>& params, double lr, double weight_decay,
                 std::vector<std::string> names) {
  AdamW adam{std::make_shared<torch::optim::AdamW>(
                 params, torch::optim::AdamWOptions(lr).weight_decay(weight_decay)),
             {},
             std::move(names)};
  const auto device = params.empty() ? at::Device(at::kCPU) : params.front().device();
  adam.steps = at::zeros({}, at::TensorOptions(device).dtype(at::kFloat));
  return adam;
}

void adamw_step(AdamW& adam, double lr, const at::Tensor& skip) {
  std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
  for (auto& group : adam.state->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);  // saved with checkpoints
    for (std::size_t i = 0; i < group.params().size(); ++i) {
      const at::Tensor& p = group.params()[i];
      if (!p.grad().defined()) continue;
      if (!same_memory_layout(p, p.grad()))
        throw std::logic_error(
            "AdamW: the gradient of parameter " + name_of(adam, i) +
            " is laid out unlike the parameter (parameter " + describe_layout(p) + ", gradient " +
            describe_layout(p.grad()) +
            "); the fused update would apply each gradient element to another weight");
      auto& s = state_of(*adam.state, p);
      if (!same_memory_layout(p, s.exp_avg()) || !same_memory_layout(p, s.exp_avg_sq()))
        throw std::logic_error("AdamW: the moments of parameter " + name_of(adam, i) +
                               " are laid out unlike the parameter");
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

void write_step_count(const AdamW& adam) {
  const auto n = static_cast<int64_t>(adam.steps.item<float>());
  for (auto& group : adam.state->param_groups())
    for (const at::Tensor& p : group.params())
      state_of(*adam.state, p).step(n);
}

void read_step_count(AdamW& adam) {
  bool counted = false;
  for (auto& group : adam.state->param_groups())
    for (const at::Tensor& p : group.params()) {
      const auto it = adam.state->state().find(p.unsafeGetTensorImpl());
      if (it == adam.state->state().end()) continue;
      auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
      // Checkpoints load on the host and may come from another layout (fp32 channels-first
      // resumed under bf16 channels-last): the moments take the parameter's device and strides,
      // which the fused kernel requires.
      const auto placed = [&p](const at::Tensor& moment) {
        if (moment.device() == p.device() && same_memory_layout(moment, p)) return moment;
        return at::empty_like(p, at::MemoryFormat::Preserve).copy_(moment);
      };
      s.exp_avg(placed(s.exp_avg()));
      s.exp_avg_sq(placed(s.exp_avg_sq()));
      if (!counted) adam.steps.fill_(static_cast<double>(s.step()));
      counted = true;
    }
}

}  // namespace difftrain::train
