// The difftrain binary as the tests run it: one thread per process, alone or on N MPI ranks.
// The test target defines DIFFTRAIN_BINARY, and DIFFTRAIN_MPIEXEC for difftrain_mpi.
#pragma once

#include <string>

#include "common/process.hpp"

namespace difftrain::testing {

inline ProcessResult difftrain_cli(const std::string& args) {
  return run_command("OMP_NUM_THREADS=1 " + std::string(DIFFTRAIN_BINARY) + " " + args);
}

#ifdef DIFFTRAIN_MPIEXEC
// Ranks oversubscribe the cores unbound; root may run them (containers, CI).
inline ProcessResult difftrain_mpi(int ranks, const std::string& args) {
  return run_command(
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 " +
      std::string(DIFFTRAIN_MPIEXEC) + " --oversubscribe --bind-to none -np " +
      std::to_string(ranks) + " " + DIFFTRAIN_BINARY + " " + args);
}
#endif

}  // namespace difftrain::testing
