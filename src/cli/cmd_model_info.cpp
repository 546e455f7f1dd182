// `difftrain model-info`: the UNet a config builds (or, with --classifier, the noisy classifier of
// a train-classifier config), with its parameter count by part.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>

#include "cli/commands.hpp"
#include "data/manifest.hpp"
#include "model/encoder_unet.hpp"
#include "model/parameter_count.hpp"
#include "model/unet.hpp"
#include "train/classifier.hpp"
#include "train/classifier_trainer.hpp"
#include "train/config.hpp"
#include "train/setup.hpp"

namespace difftrain::cli {
namespace {

struct Options {
  std::string config;
  std::vector<std::string> overrides;
  bool classifier = false;
};

void print_parts(const torch::nn::Module& net) {
  for (const auto& [part, count] : model::parameter_breakdown(net))
    fmt::print("  {:<20}{:>14L}\n", part, count);
  fmt::print("  {:<20}{:>14L}\n", "total", model::parameter_count(net));
}

int run(const Options& o) {
  const train::Config config = train::load_config(o.config, o.overrides);
  train::validate(config);
  // The data decides the image shape when its manifest is at hand; model.image_size and
  // model.in_channels otherwise.
  std::optional<data::Manifest> manifest;
  if (config.model.image_size == 0 || config.model.in_channels == 0)
    manifest = data::read_manifest(config.data.train);
  const auto shape = train::data_shape(config, manifest ? &*manifest : nullptr);
  if (o.classifier) {
    train::validate_for_classifier(config);
    const model::UNetConfig cc = train::classifier_unet_config(config, shape);
    fmt::print("classifier ({} pooling) for {}x{}x{} images, {} classes\n",
               model::to_string(config.model.pool), cc.in_channels, cc.image_size, cc.image_size,
               cc.out_channels);
    print_parts(*model::EncoderUNet(cc, config.model.pool));
    return kOk;
  }
  const model::UNetConfig uc = train::unet_config(config, shape);
  model::UNet net(uc);
  fmt::print(
      "UNet for {}x{}x{} images, {} output channels{}{}\n", uc.in_channels, uc.image_size,
      uc.image_size, uc.out_channels,
      uc.num_classes > 0 ? fmt::format(", {} classes{}", uc.num_classes,
                                       uc.null_class ? " and the null label" : "")
                         : "",
      uc.low_res_size > 0
          ? fmt::format(", an upsampler from {}x{}x{}{}", uc.in_channels, uc.low_res_size,
                        uc.low_res_size, uc.low_res_noise ? ", told its input's noise level" : "")
          : "");
  print_parts(*net);
  return kOk;
}

}  // namespace

void add_model_info_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("model-info", "Print the parameter count of a config's UNet");
  cmd->add_option("--config", o->config, "YAML experiment config")->required();
  cmd->add_option("--set", o->overrides, "Override a config key: section.key=value (repeatable)");
  cmd->add_flag("--classifier", o->classifier,
                "The config is a train-classifier config: count the noisy classifier's parameters");
  cmd->callback([o, &exit_code] { exit_code = run(*o); });
}

}  // namespace difftrain::cli
