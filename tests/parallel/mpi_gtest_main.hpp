// The process world of a GoogleTest binary that runs under mpirun, and its main(): the world and
// a watchdog live for the whole run, so that a test that fails on one rank and leaves the others
// in a collective is ended by the watchdog instead of hanging. Include it from one file only.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>

#include "parallel/watchdog.hpp"
#include "parallel/world.hpp"

namespace difftrain::parallel {
inline World* g_world = nullptr;
inline Watchdog* g_watchdog = nullptr;
}  // namespace difftrain::parallel

int main(int argc, char** argv) {
  at::set_num_threads(1);
  difftrain::parallel::World world;
  difftrain::parallel::Watchdog watchdog(std::chrono::seconds(60));
  difftrain::parallel::g_world = &world;
  difftrain::parallel::g_watchdog = &watchdog;
  ::testing::InitGoogleTest(&argc, argv);
  if (world.rank() != 0) GTEST_FLAG_SET(brief, true);  // one full report, failures from all
  return RUN_ALL_TESTS();
}
