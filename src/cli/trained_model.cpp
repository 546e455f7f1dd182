#include "cli/trained_model.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "data/error.hpp"
#include "diffusion/respace.hpp"
#include "parallel/rank_device.hpp"
#include "train/checkpoint.hpp"

namespace difftrain::cli {
namespace {

namespace fs = std::filesystem;

std::string resolve_checkpoint(const ModelSource& s) {
  if (!s.checkpoint.empty()) {
    if (!fs::is_regular_file(s.checkpoint))
      throw std::invalid_argument(s.checkpoint + ": no such checkpoint file");
    return s.checkpoint;
  }
  if (!fs::is_directory(s.run_dir))
    throw std::invalid_argument(s.run_dir + ": no such run directory");
  if (auto latest = train::latest_valid_checkpoint(s.run_dir)) return *latest;
  throw std::invalid_argument(s.run_dir + ": the run directory has no valid checkpoint in " +
                              (fs::path(s.run_dir) / "checkpoints").string());
}

std::optional<double> resolve_ema(const ModelSource& s, const train::Config& c,
                                  const std::string& checkpoint) {
  if (s.ema == "none") return std::nullopt;
  if (s.ema.empty()) {
    if (c.training.ema_rates.empty()) return std::nullopt;
    return c.training.ema_rates.front();
  }
  try {
    std::size_t used = 0;
    const double rate = std::stod(s.ema, &used);
    if (used == s.ema.size() && rate > 0 && rate < 1) return rate;
  } catch (const std::exception&) {
  }
  throw std::invalid_argument("--ema '" + s.ema + "' is not an EMA rate in (0, 1) or 'none' (" +
                              checkpoint + " was trained with training.ema_rates)");
}

// The shape the network was trained on; see load_trained_model.
train::DataShape model_shape(TrainedModel& m, const data::Manifest* fallback) {
  const train::Config& c = m.config;
  std::string why_not;
  try {
    m.train_manifest = data::read_manifest(c.data.train);
  } catch (const data::Error& e) {
    why_not = e.what();
  }
  if (m.train_manifest) return train::data_shape(c, &*m.train_manifest);
  const std::string prefix = m.checkpoint + ": cannot size the model: its config's data.train ('" +
                             c.data.train + "') cannot be read (" + why_not + ")";
  // Checkpoints store the resolved shape (model.image_size, in_channels, num_classes).
  const bool sized = c.model.image_size > 0 && c.model.in_channels > 0 &&
                     (!c.data.class_conditional || c.model.num_classes > 0);
  if (sized) return train::data_shape(c, nullptr);
  if (c.data.class_conditional && !fallback)
    throw std::invalid_argument(prefix + " and the model is class-conditional");
  if (fallback) {
    spdlog::warn("{}; sizing the model from {}", prefix, fallback->path);
    return train::data_shape(c, fallback);
  }
  throw std::invalid_argument(prefix + " and model.image_size / model.in_channels are not set");
}

}  // namespace

void add_model_source_options(CLI::App& cmd, ModelSource& source) {
  auto* run =
      cmd.add_option("--run", source.run_dir, "Run directory: its newest valid checkpoint is used");
  auto* ckpt = cmd.add_option("--checkpoint", source.checkpoint, "Checkpoint file (.pt)");
  run->excludes(ckpt);
  ckpt->excludes(run);
  cmd.add_option("--ema", source.ema,
                 "EMA rate whose weights to use, or 'none' for the raw weights (default: the "
                 "first of the config's training.ema_rates)");
  add_device_option(cmd, source.device);
}

void add_device_option(CLI::App& cmd, std::string& device) {
  cmd.add_option("--device", device,
                 "auto (a GPU per local rank when there are GPUs), cpu, cuda or cuda:N")
      ->default_val("auto")
      ->check([](const std::string& text) {
        try {
          parallel::parse_device_request(text);
          return std::string();
        } catch (const std::invalid_argument& e) {
          return std::string(e.what());
        }
      });
}

TrainedModel load_trained_model(const ModelSource& source, const c10::Device& device,
                                const data::Manifest* fallback) {
  if (source.run_dir.empty() && source.checkpoint.empty())
    throw std::invalid_argument("give --run DIR or --checkpoint FILE");
  TrainedModel m;
  m.checkpoint = resolve_checkpoint(source);
  const train::CheckpointInfo info = train::read_checkpoint_info(m.checkpoint);
  train::require_kind(info, m.checkpoint, "diffusion");
  m.step = info.step;
  const std::string origin = m.checkpoint + " (stored config)";
  std::vector<std::string> unknown_keys;  // from another version of difftrain
  m.config = train::parse_stored_config(info.config_yaml, origin, unknown_keys);
  for (const auto& key : unknown_keys)
    spdlog::warn("{}: ignoring the key '{}', unknown to this version of difftrain", origin, key);
  try {
    train::validate(m.config);
  } catch (const train::ConfigError& e) {
    throw train::ConfigError(origin + ": " + e.what());
  }
  m.ema_rate = resolve_ema(source, m.config, m.checkpoint);
  m.shape = model_shape(m, fallback);
  m.device = device;

  model::UNet net(train::unet_config(m.config, m.shape));
  train::load_model_weights(m.checkpoint, *net, m.ema_rate);
  net->to(device);
  // Sampling and evaluation run in fp32: auto is channels-first there.
  train::apply_model_settings(*net, m.config, train::Precision::fp32);
  net->eval();  // dropout off
  m.denoiser = train::make_denoiser(net, m.config);

  m.diffusion = diffusion::to_device(train::make_diffusion(m.config), device);

  // An EMA averages over about 1 / (1 - rate) steps: early in a run it is still close to the
  // initial weights (unless training.ema_warmup shortened it).
  // (Imported weights start at step 0 but are not initial ones.)
  if (m.ema_rate && !m.config.training.ema_warmup && info.imported_from.empty() &&
      static_cast<double>(m.step) < 1.0 / (1.0 - *m.ema_rate))
    spdlog::warn(
        "EMA {} averages over ~{:.0f} steps but {} is at step {}: its weights are still close to "
        "the initial ones; --ema none uses the trained weights",
        *m.ema_rate, 1.0 / (1.0 - *m.ema_rate), m.checkpoint, m.step);
  return m;
}

TrainedModel load_trained_model_on_rank(const ModelSource& source, const parallel::World& world,
                                        const data::Manifest* fallback) {
  TrainedModel m = load_trained_model(
      source, parallel::rank_device(world, parallel::parse_device_request(source.device)),
      fallback);
  if (m.config.training.threads > 0)
    at::set_num_threads(static_cast<int>(m.config.training.threads));
  return m;
}

TrainedClassifier load_trained_classifier(const std::string& run_or_checkpoint,
                                          const c10::Device& device) {
  TrainedClassifier c;
  ModelSource source;
  (fs::is_directory(run_or_checkpoint) ? source.run_dir : source.checkpoint) = run_or_checkpoint;
  c.checkpoint = resolve_checkpoint(source);
  const train::CheckpointInfo info = train::read_checkpoint_info(c.checkpoint);
  train::require_kind(info, c.checkpoint, "classifier");
  c.step = info.step;
  std::vector<std::string> unknown_keys;
  c.config =
      train::parse_stored_config(info.config_yaml, c.checkpoint + " (stored config)", unknown_keys);
  c.shape = train::data_shape(c.config, nullptr);  // the stored config is resolved: no data needed
  model::EncoderUNet net(train::classifier_unet_config(c.config, c.shape), c.config.model.pool);
  train::load_model_weights(c.checkpoint, *net);
  net->to(device);
  net->eval();
  c.classifier = train::make_classifier(net, c.config);
  c.diffusion = diffusion::to_device(train::make_diffusion(c.config), device);
  return c;
}

void check_not_a_training_checkpoint(const std::string& path, const std::string& what) {
  if (fs::path(path).parent_path().filename() == "checkpoints" && train::checkpoint_step(path))
    throw std::invalid_argument(what + " " + path +
                                ": named like a training checkpoint, which it would replace if it "
                                "exists and `train --resume auto` would resume from; choose "
                                "another name");
}

void check_output_directory(const std::string& path, const std::string& what) {
  const fs::path dir =
      fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  const fs::path probe = dir / (".difftrain_probe_" + std::to_string(getpid()));
  const bool writable = !ec && std::ofstream(probe).good();
  fs::remove(probe, ec);
  if (!writable)
    throw std::invalid_argument(what + ": cannot write to the directory " + dir.string());
}

std::string describe(const TrainedModel& m) {
  return fmt::format("{} (step {}, {})", m.checkpoint, m.step,
                     m.ema_rate ? fmt::format("EMA {}", *m.ema_rate) : std::string("raw weights"));
}

}  // namespace difftrain::cli
