// h5shard's subcommands: each registers itself on the app and stores the exit code.
#pragma once

#include <string>

namespace CLI {
class App;
}

namespace difftrain::h5shard {

enum ExitCode : int { kOk = 0, kCheckFailed = 1, kBadInput = 2 };

// command_line: the whole invocation, recorded in the manifest.
void add_convert_command(CLI::App& app, int& exit_code, const std::string& command_line);
void add_inspect_command(CLI::App& app, int& exit_code);
void add_verify_command(CLI::App& app, int& exit_code);

}  // namespace difftrain::h5shard
