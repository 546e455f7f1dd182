// `difftrain train` and `difftrain train-classifier`: one model (a diffusion model, or the noisy
// classifier that guides one) trained by every rank of the MPI job (or by this process alone).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>

#include "cli/commands.hpp"
#include "cli/run_on_world.hpp"
#include "common/shell_word.hpp"
#include "parallel/communicator.hpp"
#include "parallel/rank_device.hpp"
#include "parallel/watchdog.hpp"
#include "parallel/world.hpp"
#include "train/classifier_trainer.hpp"
#include "train/config.hpp"
#include "train/trainer.hpp"

namespace difftrain::cli {
namespace {

struct Options {
  std::string config;
  std::vector<std::string> overrides;
  std::string resume;
  std::string fault;
  int fault_rank = -1;
  bool print_config = false;
  bool allow_objective_change = false;
};

// The resolved config, checked for this world; printed and nullopt with --print-config.
std::optional<train::Config> config_for(parallel::World& world, const Options& o, bool classifier) {
  const train::Config config = train::load_config(o.config, o.overrides);
  train::validate(config);
  train::validate_for_world(config, world.size());
  if (classifier) train::validate_for_classifier(config);
  if (o.print_config) {
    if (world.rank() == 0) std::fputs(train::to_yaml(config).c_str(), stdout);
    return std::nullopt;
  }
  if (world.rank() == 0) spdlog::info("resolved config:\n{}", train::to_yaml(config));
  return config;
}

// This rank's device, its communicator and the watchdog over both, for `train`.
train::TrainResult train_on_cluster(
    parallel::World& world, const train::Config& config,
    const std::function<train::TrainResult(train::Cluster&)>& train) {
  const auto timeout = parallel::watchdog_timeout_from_env(
      std::chrono::milliseconds(static_cast<int64_t>(config.training.watchdog_timeout * 1000)));
  parallel::Watchdog watchdog(timeout);
  const c10::Device device = parallel::rank_device(world, config.device);
  const std::unique_ptr<parallel::Communicator> comm =
      parallel::make_communicator(world, device, &watchdog);
  train::Cluster cluster{
      *comm, &watchdog,
      [&](const std::string& what) { parallel::barrier_with_timeout(world, 10 * timeout, what); },
      device};
  return train(cluster);
}

std::string command_line(const char* command, const Options& o) {
  std::string line = std::string("difftrain ") + command + " --config " + shell_word(o.config);
  for (const std::string& s : o.overrides)
    line += " --set " + shell_word(s);
  return line;
}

int train_on(parallel::World& world, const Options& o) {
  const std::optional<train::Config> config = config_for(world, o, /*classifier=*/false);
  if (!config) return kOk;
  const train::TrainResult r = train_on_cluster(world, *config, [&](train::Cluster& cluster) {
    return train::train(*config, cluster,
                        {o.resume, o.fault, o.fault_rank, o.allow_objective_change});
  });
  if (world.rank() == 0) {
    spdlog::info("{} after {} steps; run directory: {}", r.interrupted ? "stopped" : "finished",
                 r.step, r.run_dir);
    spdlog::info("checkpoint: {}", r.last_checkpoint);
    spdlog::info("resume:  {} --resume auto", command_line("train", o));
    const train::DataConfig& d = config->data;
    const std::string low_res =
        config->model.low_res_size == 0
            ? ""
            : " --low-res " + shell_word(d.validation.empty() ? d.train : d.validation);
    spdlog::info("sample:  difftrain sample --run {}{} --num 64 --out {}", shell_word(r.run_dir),
                 low_res, shell_word(r.run_dir + "/samples"));
  }
  return kOk;
}

int train_classifier_on(parallel::World& world, const Options& o) {
  const std::optional<train::Config> config = config_for(world, o, /*classifier=*/true);
  if (!config) return kOk;
  const train::TrainResult r = train_on_cluster(world, *config, [&](train::Cluster& cluster) {
    return train::train_classifier(*config, cluster, o.resume);
  });
  if (world.rank() == 0) {
    spdlog::info("{} after {} steps; run directory: {}", r.interrupted ? "stopped" : "finished",
                 r.step, r.run_dir);
    spdlog::info("checkpoint: {}", r.last_checkpoint);
    spdlog::info("resume:  {} --resume auto", command_line("train-classifier", o));
    spdlog::info(
        "guide:   difftrain sample --run MODEL_RUN --classifier {} --classifier-scale 1 "
        "--num 64 --out samples",
        shell_word(r.run_dir));
  }
  return kOk;
}

// --config, --set, --resume and --print-config, which both commands take.
void add_run_options(CLI::App& cmd, Options& o) {
  cmd.add_option("--config", o.config, "YAML experiment config")->required();
  cmd.add_option("--set", o.overrides, "Override a config key: section.key=value (repeatable)");
  cmd.add_option(
      "--resume", o.resume,
      "'auto' (newest valid checkpoint of the run directory, if any) or a checkpoint file");
  cmd.add_flag("--print-config", o.print_config,
               "Print the resolved config (defaults, --set overrides) as YAML and exit");
}

}  // namespace

void add_train_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd =
      app.add_subcommand("train", "Train a diffusion model (under mpirun: on every rank)");
  add_run_options(*cmd, *o);
  cmd->add_option("--fault", o->fault,
                  "Debug: hang@STEP, exit@STEP, kill@STEP, term@STEP, nan@STEP, diverge@STEP or "
                  "late_batch@STEP");
  cmd->add_option("--fault-rank", o->fault_rank,
                  "Debug: the rank --fault applies to (default all)");
  cmd->add_flag("--allow-objective-change", o->allow_objective_change,
                "Resume a checkpoint trained with another schedule, T, target, variance, loss or "
                "timestep scaling (fine-tuning on purpose)");
  cmd->callback([o, &exit_code] {
    exit_code = run_on_world([&](parallel::World& world) { return train_on(world, *o); });
  });
}

void add_train_classifier_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "train-classifier",
      "Train the noisy classifier of classifier guidance (under mpirun: on every rank)");
  add_run_options(*cmd, *o);
  cmd->callback([o, &exit_code] {
    exit_code =
        run_on_world([&](parallel::World& world) { return train_classifier_on(world, *o); });
  });
}

}  // namespace difftrain::cli
