#include "model/gradient_checkpoint.hpp"

#include <mutex>

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "common/autocast_scope.hpp"

namespace difftrain::model {
namespace {

// What the recomputation in backward needs, carried by the autograd node (as a capsule in its
// saved_data): the block, which of its inputs require grad, its parameters, and the generator and
// autocast state at the forward.
struct Recomputation : torch::CustomClassHolder {
  CheckpointedBlock block;
  std::vector<bool> input_requires_grad;
  std::vector<at::Tensor> params;
  at::Generator generator;
  at::Tensor generator_state;
  c10::DeviceType autocast_device = c10::DeviceType::CPU;
  bool autocast_enabled = false;
  at::ScalarType autocast_dtype = at::kFloat;
};

at::Tensor state_of(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void set_state(at::Generator& generator, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // inputs_and_params are the block's inputs, then its parameters: as arguments of the node they
  // give it the edges along which their gradients flow (the parameters' to their accumulators,
  // where the gradient reducer's hooks fire as without checkpointing).
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                const c10::intrusive_ptr<Recomputation>& r,
                                                at::TensorList inputs_and_params) {
    const auto num_inputs = static_cast<int64_t>(r->input_requires_grad.size());
    const std::vector<at::Tensor> inputs = inputs_and_params.slice(0, num_inputs).vec();
    ctx->save_for_backward(inputs);
    ctx->saved_data["recomputation"] = c10::IValue::make_capsule(r);
    return {r->block(inputs)};  // Function::apply runs this without recording gradients
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto r = c10::static_intrusive_pointer_cast<Recomputation>(
        ctx->saved_data["recomputation"].toCapsule());
    std::vector<at::Tensor> inputs;
    std::vector<at::Tensor> wrt;  // the inputs that require grad, then the parameters
    const std::vector<at::Tensor> saved = ctx->get_saved_variables();
    for (std::size_t i = 0; i < saved.size(); ++i) {
      inputs.push_back(saved[i].detach().requires_grad_(r->input_requires_grad[i]));
      if (r->input_requires_grad[i]) wrt.push_back(inputs.back());
    }
    wrt.insert(wrt.end(), r->params.begin(), r->params.end());

    at::Tensor output;
    {
      // The forward's randomness and precision, then the generator as backward found it.
      const at::Tensor state_now = state_of(r->generator);
      set_state(r->generator, r->generator_state);
      at::AutoGradMode record(true);
      AutocastScope autocast(r->autocast_device, r->autocast_enabled, r->autocast_dtype);
      output = r->block(inputs);
      set_state(r->generator, state_now);
    }
    const torch::autograd::variable_list grads =
        torch::autograd::grad({output}, wrt, grad_outputs, /*retain_graph=*/false,
                              /*create_graph=*/false, /*allow_unused=*/true);

    // One gradient per argument of forward: none for the recomputation, then inputs, parameters.
    torch::autograd::variable_list out{at::Tensor()};
    std::size_t next = 0;
    for (bool requires_grad : r->input_requires_grad)
      out.push_back(requires_grad ? grads[next++] : at::Tensor());
    out.insert(out.end(), grads.begin() + static_cast<std::ptrdiff_t>(next), grads.end());
    return out;
  }
};

}  // namespace

at::Tensor gradient_checkpoint(CheckpointedBlock block, std::vector<at::Tensor> inputs,
                               const std::vector<at::Tensor>& params) {
  auto r = c10::make_intrusive<Recomputation>();
  bool any_grad = false;
  for (const auto& x : inputs) {
    r->input_requires_grad.push_back(x.requires_grad());
    any_grad = any_grad || x.requires_grad();
  }
  for (const auto& p : params)
    if (p.requires_grad()) r->params.push_back(p);
  if (!at::GradMode::is_enabled() || (!any_grad && r->params.empty())) return block(inputs);

  const c10::Device device = inputs.front().device();
  r->block = std::move(block);
  r->generator = at::globalContext().defaultGenerator(device);
  r->generator_state = state_of(r->generator);
  r->autocast_device = device.type();
  r->autocast_enabled = at::autocast::is_autocast_enabled(device.type());
  r->autocast_dtype = at::autocast::get_autocast_dtype(device.type());

  std::vector<at::Tensor> args = std::move(inputs);
  args.insert(args.end(), r->params.begin(), r->params.end());
  // As a TensorList, so that the node counts each tensor as an input (a vector would be one
  // opaque argument).
  return CheckpointFunction::apply(r, at::TensorList(args))[0];
}

}  // namespace difftrain::model
