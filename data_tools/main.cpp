// h5shard: prepares image sets as HDF5 shards with a manifest, and inspects and verifies them.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <exception>

#include "commands.hpp"

int main(int argc, char** argv) {
  using namespace difftrain::h5shard;
  spdlog::set_pattern("[%H:%M:%S] %^%l%$: %v");
  std::string command_line;
  for (int i = 0; i < argc; ++i)
    command_line += (i ? " " : "") + std::string(argv[i]);
  CLI::App app{"h5shard: convert image sets to HDF5 shards, inspect and verify them"};
  app.require_subcommand(1);
  int exit_code = kOk;
  add_convert_command(app, exit_code, command_line);
  add_inspect_command(app, exit_code);
  add_verify_command(app, exit_code);
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
