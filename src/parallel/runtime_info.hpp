// Versions of the communication stack, for `difftrain info` and run logs.
#pragma once

#include <string>

namespace difftrain::parallel {

struct CommRuntimeInfo {
  std::string mpi_library;   // MPI_Get_library_version, first line
  bool nccl_built = false;   // the NCCL backend is compiled in
  std::string nccl_version;  // ncclGetVersion, "" when not built
  std::string cuda_runtime;  // cudaRuntimeGetVersion of the runtime we link, "" when not built
  std::string cuda_driver;   // cudaDriverGetVersion, "none" without a driver
};

// Safe to call before MPI_Init and on machines without GPUs.
CommRuntimeInfo comm_runtime_info();

}  // namespace difftrain::parallel
