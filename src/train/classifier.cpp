#include "train/classifier.hpp"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/autograd.h>

#include "train/train_state.hpp"

namespace difftrain::train {

at::Tensor Classifier::logits(const at::Tensor& x_t, const at::Tensor& t) const {
  return net.ptr()->forward(x_t, t.to(at::kFloat) * timestep_scale);
}

diffusion::GuidanceFn Classifier::guidance(const at::Tensor& y, double scale) const {
  return [classifier = *this, y, scale](const at::Tensor& x_t, const at::Tensor& t) {
    // Samplers run under InferenceMode, whose tensors autograd cannot record: a normal copy of
    // x_t is the leaf the gradient is taken for.
    const c10::InferenceMode normal_tensors(false);
    const torch::AutoGradMode with_grad(true);
    const at::Tensor x = x_t.detach().clone().requires_grad_(true);
    const at::Tensor log_probs = at::log_softmax(classifier.logits(x, t).to(at::kFloat), -1);
    const at::Tensor selected = log_probs.gather(1, y.view({-1, 1})).sum();
    const at::Tensor grad = torch::autograd::grad({selected}, {x})[0];
    return (grad * scale).detach().to(x_t.scalar_type());
  };
}

model::UNetConfig classifier_unet_config(const Config& config, const DataShape& shape) {
  if (shape.num_classes < 1)
    throw ConfigError(
        "a classifier needs class labels: set data.class_conditional: true, with shards that "
        "have labels");
  Config unconditional = config;
  unconditional.data.class_conditional = false;
  DataShape image_shape = shape;
  image_shape.num_classes = 0;
  model::UNetConfig u = unet_config(unconditional, image_shape);
  u.out_channels = shape.num_classes;
  return u;
}

Classifier make_classifier(model::EncoderUNet net, const Config& config) {
  const auto& d = config.diffusion;
  return {std::move(net), d.rescale_timesteps ? 1000.0 / static_cast<double>(d.steps) : 1.0};
}

ClassifierState make_classifier_state(const Config& config, const DataShape& shape,
                                      const c10::Device& device, parallel::Communicator& comm) {
  const auto& tc = config.training;
  ClassifierState s;
  torch::manual_seed(config.seed);
  s.net = model::EncoderUNet(classifier_unet_config(config, shape), config.model.pool);
  s.net->to(device);
  apply_model_settings(*s.net, config, tc.precision);
  broadcast_weights(*s.net, comm);
  s.optimizer =
      make_adamw(s.net->parameters(), tc.lr, tc.weight_decay, s.net->named_parameters().keys());
  return s;
}

}  // namespace difftrain::train
