// `difftrain info`: versions of every library in the process and the devices it sees.
#include <H5public.h>
#include <spdlog/spdlog.h>
#include <spdlog/version.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "cli/commands.hpp"
#include "parallel/runtime_info.hpp"

namespace difftrain::cli {
namespace {

void print_info() {
  const parallel::CommRuntimeInfo comm = parallel::comm_runtime_info();
  unsigned h5_major = 0, h5_minor = 0, h5_release = 0;
  H5get_libversion(&h5_major, &h5_minor, &h5_release);
  const auto row = [](const char* name, const std::string& value) {
    std::cout << fmt::format("{:<14}{}\n", name, value);
  };
  row("difftrain", DIFFTRAIN_VERSION);
  row("LibTorch", TORCH_VERSION);
  row("CUDA build", torch::cuda::is_available() || comm.nccl_built ? "yes" : "no");
  row("CUDA runtime", comm.nccl_built ? comm.cuda_runtime : "not built");
  row("CUDA driver", comm.nccl_built ? comm.cuda_driver : "not built");
  row("NCCL",
      comm.nccl_built ? comm.nccl_version : "not built (DIFFTRAIN_NCCL=OFF or CPU LibTorch)");
  row("MPI", comm.mpi_library);
  row("HDF5", fmt::format("{}.{}.{}", h5_major, h5_minor, h5_release));
  row("spdlog", fmt::format("{}.{}.{}", SPDLOG_VER_MAJOR, SPDLOG_VER_MINOR, SPDLOG_VER_PATCH));
  const auto gpus = torch::cuda::device_count();
  row("devices",
      gpus > 0 ? fmt::format("cpu, {} x cuda", gpus) : std::string("cpu (no CUDA device)"));
}

}  // namespace

void add_info_command(CLI::App& app, int& exit_code) {
  CLI::App* cmd = app.add_subcommand("info", "Print library versions and the devices in sight");
  cmd->callback([&exit_code] {
    print_info();
    exit_code = kOk;
  });
}

}  // namespace difftrain::cli
