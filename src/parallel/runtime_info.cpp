#include "parallel/runtime_info.hpp"

#include <mpi.h>

#ifdef DIFFTRAIN_HAVE_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>
#endif

namespace difftrain::parallel {
namespace {

[[maybe_unused]] std::string dotted(int major, int minor, int patch = -1) {
  std::string s = std::to_string(major) + "." + std::to_string(minor);
  return patch >= 0 ? s + "." + std::to_string(patch) : s;
}

}  // namespace

CommRuntimeInfo comm_runtime_info() {
  CommRuntimeInfo info;
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int len = 0;
  MPI_Get_library_version(mpi, &len);
  info.mpi_library = std::string(mpi, len);
  info.mpi_library = info.mpi_library.substr(0, info.mpi_library.find_first_of(",\n"));
#ifdef DIFFTRAIN_HAVE_NCCL
  info.nccl_built = true;
  int v = 0;
  if (ncclGetVersion(&v) == ncclSuccess)
    info.nccl_version = dotted(v / 10000, v % 10000 / 100, v % 100);
  if (cudaRuntimeGetVersion(&v) == cudaSuccess) info.cuda_runtime = dotted(v / 1000, v % 1000 / 10);
  int driver = 0;
  info.cuda_driver = cudaDriverGetVersion(&driver) == cudaSuccess && driver > 0
                         ? dotted(driver / 1000, driver % 1000 / 10)
                         : "none";
#endif
  return info;
}

}  // namespace difftrain::parallel
