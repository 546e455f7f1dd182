#include "cli/run_on_world.hpp"

#include <spdlog/spdlog.h>

#include <exception>

#include "cli/commands.hpp"
#include "parallel/world.hpp"

namespace difftrain::cli {

int run_on_world(const std::function<int(parallel::World&)>& body) {
  parallel::World world;
  if (world.rank() != 0) spdlog::set_level(spdlog::level::warn);
  try {
    return body(world);
  } catch (const std::exception& e) {
    if (world.size() == 1) {
      spdlog::error("{}", e.what());
      return kBadInput;
    }
    parallel::abort_world(e.what(), kBadInput);
  }
}

}  // namespace difftrain::cli
