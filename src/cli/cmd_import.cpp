// `difftrain import`: a state dict from PyTorch (improved-diffusion, guided-diffusion, a difftrain
// export; torch.save's zip or legacy format, or safetensors) into a difftrain checkpoint of the
// model a config builds, or of guided-diffusion's noisy classifier (--classifier). The checkpoint
// samples and evaluates as any other, and `train --resume` fine-tunes it: the optimizer then starts
// fresh, as nothing in a state dict says what its moments were.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <map>
#include <memory>
#include <optional>

#include "cli/commands.hpp"
#include "cli/trained_model.hpp"
#include "data/manifest.hpp"
#include "model/parameter_count.hpp"
#include "model/unet.hpp"
#include "parallel/communicator.hpp"
#include "train/checkpoint.hpp"
#include "train/classifier.hpp"
#include "train/classifier_trainer.hpp"
#include "train/config.hpp"
#include "train/setup.hpp"
#include "train/train_state.hpp"
#include "weights/pt_file.hpp"
#include "weights/safetensors_file.hpp"
#include "weights/state_dict.hpp"

namespace difftrain::cli {
namespace {

struct Options {
  std::string weights, ema_weights, config, out;
  std::vector<std::string> overrides;
  bool classifier = false;
};

weights::StateDict read_weights(const std::string& path) {
  if (path.ends_with(".safetensors")) return weights::load_safetensors(path);
  return weights::load_pt(path);
}

// The image shape from model.image_size / in_channels / num_classes when the config sets them
// (then the data need not be at hand, as for a published model), else from data.train's manifest.
train::DataShape model_shape(const train::Config& c) {
  const bool sized = c.model.image_size > 0 && c.model.in_channels > 0 &&
                     (!c.data.class_conditional || c.model.num_classes > 0);
  if (sized) return train::data_shape(c, nullptr);
  const data::Manifest manifest = data::read_manifest(c.data.train);
  return train::data_shape(c, &manifest);
}

// Loads `path` into `net`, saying which precisions were converted.
void load_weights(torch::nn::Module& net, const std::string& path) {
  const weights::StateDict state = read_weights(path);
  std::map<std::string, int64_t> converted;
  for (const auto& [name, t] : state)
    if (t.scalar_type() != at::kFloat) ++converted[c10::toString(t.scalar_type())];
  weights::load_state_dict(net, state, path);
  for (const auto& [dtype, count] : converted)
    spdlog::info("{}: converted {} {} tensor(s) to Float", path, count, dtype);
}

// guided-diffusion's classifier (EncoderUNetModel's state dict) into a classifier checkpoint for
// `sample --classifier`.
int import_classifier(const Options& o, const train::Config& config,
                      const train::DataShape& shape) {
  if (!o.ema_weights.empty())
    throw std::invalid_argument("--ema-weights: a classifier has no EMA weights");
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_local_communicator();
  train::ClassifierState state = train::make_classifier_state(config, shape, c10::kCPU, *comm);
  load_weights(*state.net, o.weights);
  train::save_classifier_checkpoint(
      o.out, state, train::to_yaml(train::resolved_config(config, shape)), o.weights);
  spdlog::info("wrote {}: a {}-class classifier, {} parameters from {}", o.out, shape.num_classes,
               model::parameter_count(*state.net), o.weights);
  spdlog::info("guide a model with it: `difftrain sample --run RUN --classifier {}`", o.out);
  return kOk;
}

int run(const Options& o) {
  const train::Config config = train::load_config(o.config, o.overrides);
  train::validate(config);
  if (o.classifier) train::validate_for_classifier(config);
  const train::DataShape shape = model_shape(config);
  check_not_a_training_checkpoint(o.out, "--out");
  check_output_directory(o.out, "--out");
  if (o.classifier) return import_classifier(o, config, shape);
  const auto& tc = config.training;

  // A fresh training state (zero Adam moments, no step count) around the imported weights; the
  // EMAs start from the weights, as the trainer starts them, or from --ema-weights.
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_local_communicator();
  train::TrainState state = train::make_train_state(config, shape, c10::kCPU, *comm);
  load_weights(*state.net, o.weights);
  std::vector<at::Tensor> ema_start = state.net->parameters();
  if (!o.ema_weights.empty()) {
    if (tc.ema_rates.empty())
      throw train::ConfigError(o.config +
                               ": --ema-weights needs an EMA rate in training.ema_rates");
    model::UNet ema_net(train::unet_config(config, shape));
    load_weights(*ema_net, o.ema_weights);
    ema_start = ema_net->parameters();
  }
  state.emas = train::make_emas(tc.ema_rates, ema_start);
  train::save_checkpoint(o.out, state, train::to_yaml(train::resolved_config(config, shape)),
                         o.weights);

  spdlog::info("wrote {}: {} parameters from {}{}, step 0", o.out,
               model::parameter_count(state.net), o.weights,
               tc.ema_rates.empty() ? ""
               : o.ema_weights.empty()
                   ? fmt::format(" (EMA {} starts from them)", fmt::join(tc.ema_rates, ", "))
                   : fmt::format(", EMA {} from {}", fmt::join(tc.ema_rates, ", "), o.ema_weights));
  spdlog::info(
      "the optimizer starts fresh (AdamW moments zero, no step count): `difftrain train --config "
      "{} --resume {}` fine-tunes from these weights",
      o.config, o.out);
  return kOk;
}

}  // namespace

void add_import_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "import", "Make a difftrain checkpoint from a PyTorch state dict (improved-diffusion names)");
  cmd->add_option("--weights", o->weights,
                  "State dict: torch.save's .pt (zip or legacy format) or .safetensors")
      ->required();
  cmd->add_option("--ema-weights", o->ema_weights,
                  "EMA weights for every rate of training.ema_rates (default: --weights)");
  cmd->add_option("--config", o->config, "YAML config that builds the model of these weights")
      ->required();
  cmd->add_option("--set", o->overrides, "Override a config key: section.key=value (repeatable)");
  cmd->add_option("--out", o->out, "Checkpoint to write (.pt)")->required();
  cmd->add_flag("--classifier", o->classifier,
                "The weights are guided-diffusion's noisy classifier (EncoderUNetModel), the "
                "config a train-classifier config: write a classifier's checkpoint");
  cmd->callback([o, &exit_code] { exit_code = run(*o); });
}

}  // namespace difftrain::cli
