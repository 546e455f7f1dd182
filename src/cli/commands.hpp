// Each subcommand registers itself on the app; its callback stores the process exit code.
#pragma once

namespace CLI {
class App;
}

namespace difftrain::cli {

// Exit codes shared by every subcommand.
enum ExitCode : int { kOk = 0, kCheckFailed = 1, kBadInput = 2 };

void add_info_command(CLI::App& app, int& exit_code);
void add_loss_eval_command(CLI::App& app, int& exit_code);
void add_train_command(CLI::App& app, int& exit_code);
void add_train_classifier_command(CLI::App& app, int& exit_code);
void add_model_info_command(CLI::App& app, int& exit_code);
void add_sample_command(CLI::App& app, int& exit_code);
void add_eval_command(CLI::App& app, int& exit_code);
void add_plot_command(CLI::App& app, int& exit_code);
void add_export_command(CLI::App& app, int& exit_code);
void add_import_command(CLI::App& app, int& exit_code);
void add_phema_command(CLI::App& app, int& exit_code);
void add_fid_command(CLI::App& app, int& exit_code);

}  // namespace difftrain::cli
