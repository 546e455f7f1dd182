// `h5shard verify DIR`: re-reads every shard and checks it against the manifest.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>

#include "commands.hpp"
#include "data/error.hpp"
#include "data/manifest.hpp"
#include "data/shard_reader.hpp"

namespace difftrain::h5shard {
namespace {

int verify(const std::string& path) {
  const data::Manifest m = data::read_manifest(path);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < m.shards.size(); ++i) {
    try {
      data::verify_shard(m, i);
      fmt::print("ok   {}  {} samples  {}\n", m.shards[i].file, m.shards[i].num_samples,
                 m.shards[i].checksum.empty() ? "(no checksum recorded)" : m.shards[i].checksum);
    } catch (const data::Error& e) {
      ++bad;
      fmt::print("BAD  {}\n", m.shards[i].file);
      spdlog::error("{}", e.what());
    }
  }
  std::fflush(stdout);
  for (const auto& e : std::filesystem::directory_iterator(m.directory()))
    if (e.path().extension() == ".partial")
      spdlog::warn("{}: left over from an interrupted conversion", e.path().string());
  if (bad) {
    spdlog::error("{}: {} of {} shards are bad", m.path, bad, m.shards.size());
    return kCheckFailed;
  }
  spdlog::info("{}: {} shards, {} samples: all match the manifest", m.path, m.shards.size(),
               m.num_samples());
  return kOk;
}

}  // namespace

void add_verify_command(CLI::App& app, int& exit_code) {
  auto path = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "verify", "Re-read every shard; check counts, shapes, dtypes and checksums");
  cmd->add_option("path", *path, "Shard directory or its manifest.json")->required();
  cmd->callback([path, &exit_code] {
    try {
      exit_code = verify(*path);
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      exit_code = kBadInput;
    }
  });
}

}  // namespace difftrain::h5shard
