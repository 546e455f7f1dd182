// difftrain: a C++ trainer for diffusion models. Subcommands live in cmd_*.cpp.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <exception>

#include "cli/commands.hpp"

int main(int argc, char** argv) {
  using namespace difftrain::cli;
  spdlog::set_pattern("[%H:%M:%S] %^%l%$: %v");
  CLI::App app{"difftrain: train, sample and evaluate diffusion models"};
  app.require_subcommand(1);
  int exit_code = kOk;
  add_info_command(app, exit_code);
  add_loss_eval_command(app, exit_code);
  add_train_command(app, exit_code);
  add_train_classifier_command(app, exit_code);
  add_model_info_command(app, exit_code);
  add_sample_command(app, exit_code);
  add_eval_command(app, exit_code);
  add_plot_command(app, exit_code);
  add_export_command(app, exit_code);
  add_import_command(app, exit_code);
  add_phema_command(app, exit_code);
  add_fid_command(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kBadInput;
  }
  return exit_code;
}
