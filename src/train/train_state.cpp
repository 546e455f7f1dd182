#include "train/train_state.hpp"

#include <torch/torch.h>

#include "parallel/broadcast_parameters.hpp"

namespace difftrain::train {

TrainState make_train_state(const Config& config, const DataShape& shape, const c10::Device& device,
                            parallel::Communicator& comm) {
  const auto& tc = config.training;
  TrainState s;
  torch::manual_seed(config.seed);
  s.net = model::UNet(unet_config(config, shape));
  s.net->to(device);
  apply_model_settings(*s.net, config, tc.precision);
  broadcast_weights(*s.net, comm);

  s.optimizer =
      make_adamw(s.net->parameters(), tc.lr, tc.weight_decay, s.net->named_parameters().keys());
  s.emas = make_emas(tc.ema_rates, s.net->parameters());
  s.phema = phema::make_power_function_ema(tc.phema.sigma_rels, s.net->parameters());
  s.sampler = make_timestep_sampler(config, config.diffusion.steps, device);
  s.scaler = make_loss_scaler(tc.precision == Precision::fp16, tc.loss_scale_init,
                              tc.loss_scale_growth_interval, tc.loss_scale_min, device);
  return s;
}

void broadcast_weights(torch::nn::Module& net, parallel::Communicator& comm) {
  std::vector<parallel::NamedTensor> params, buffers;
  for (const auto& p : net.named_parameters())
    params.push_back({p.key(), p.value()});
  for (const auto& b : net.named_buffers())
    buffers.push_back({b.key(), b.value()});
  parallel::broadcast_parameters(comm, params, buffers);
}

std::vector<std::pair<std::string, at::Tensor>> named_state_tensors(const TrainState& s) {
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& p : s.net->named_parameters())
    named.emplace_back("model/" + p.key(), p.value());
  for (const auto& b : s.net->named_buffers())
    named.emplace_back("model/" + b.key(), b.value());
  for (std::size_t i = 0; i < s.emas.size(); ++i)
    for (std::size_t j = 0; j < s.emas[i].params.size(); ++j)
      named.emplace_back("ema/" + std::to_string(i) + "/" + std::to_string(j), s.emas[i].params[j]);
  named.emplace_back("sampler/loss_history", s.sampler.loss_history);
  named.emplace_back("sampler/loss_counts", s.sampler.loss_counts);
  named.emplace_back("scaler/scale", s.scaler.scale);
  named.emplace_back("scaler/growth_tracker", s.scaler.growth_tracker);
  return named;
}

std::vector<at::Tensor> replicated_tensors(const TrainState& s) {
  std::vector<at::Tensor> tensors;
  for (const auto& [name, t] : named_state_tensors(s))
    tensors.push_back(t);
  for (const at::Tensor& p : s.net->parameters()) {
    const auto it = s.optimizer.state->state().find(p.unsafeGetTensorImpl());
    if (it == s.optimizer.state->state().end()) continue;
    const auto& adam = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    tensors.push_back(adam.exp_avg());
    tensors.push_back(adam.exp_avg_sq());
  }
  tensors.push_back(s.optimizer.steps);
  phema::append_replicated_state(s.phema, tensors);
  return tensors;
}

}  // namespace difftrain::train
