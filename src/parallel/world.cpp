#include "parallel/world.hpp"

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>

#include "parallel/mpi_check.hpp"

namespace difftrain::parallel {

World::World() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // Open MPI's non-blocking all-reduce (libnbc, which carries the gradient buckets) picks a
    // binomial algorithm by default: half the bus bandwidth of the blocking MPI_Allreduce on large
    // buffers. The ring gets all of it (bench/bench_scaling.sh). A user's own setting wins.
    setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", /*overwrite=*/0);
    int provided = MPI_THREAD_SINGLE;
    if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
      throw std::runtime_error("MPI_Init_thread failed");
    }
    owns_mpi_ = true;
    if (provided < MPI_THREAD_FUNNELED) {
      MPI_Finalize();
      throw std::runtime_error("MPI provides thread level " + std::to_string(provided) +
                               ", below MPI_THREAD_FUNNELED");
    }
  }
  // Failed calls return an error code (turned into an exception naming the call) rather than
  // MPI's default of aborting the job from inside the library with a generic message.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);

  MPI_Comm node;
  mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
            "Comm_split_type(shared)");
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);

  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  hostname_.assign(name, len);
}

World::~World() {
  if (!owns_mpi_) return;
  // Finalising while unwinding would wait for peers that may be stuck in a collective with us.
  if (std::uncaught_exceptions() > 0) {
    abort_world("exiting on an exception; aborting the job so the other ranks do not wait");
  }
  MPI_Finalize();
}

void abort_world(const std::string& message, int code) noexcept {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  const bool live = initialized && !finalized;
  int rank = 0, size = 1;
  char host[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  if (live) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);
  }
  std::fprintf(stderr, "difftrain rank %d/%d (%s): %s\n", rank, size, host, message.c_str());
  std::fflush(stderr);
  if (live) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this covers an MPI that does
}

void barrier_with_timeout(const World& world, std::chrono::milliseconds timeout,
                          std::string_view what) {
  if (world.size() == 1) return;
  MPI_Request request;
  mpi_check(MPI_Ibarrier(MPI_COMM_WORLD, &request), "Ibarrier (" + std::string(what) + ")");
  const auto start = std::chrono::steady_clock::now();
  auto pause = std::chrono::microseconds(50);
  for (;;) {
    int done = 0;
    mpi_check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "Test (" + std::string(what) + ")");
    if (done) return;
    const auto waited = std::chrono::steady_clock::now() - start;
    if (waited > timeout) {
      throw std::runtime_error("barrier '" + std::string(what) + "' timed out after " +
                               std::to_string(std::chrono::duration<double>(timeout).count()) +
                               " s on rank " + std::to_string(world.rank()));
    }
    // Back off to at most 20 ms between polls: the wait is for disk I/O on rank 0, not a race.
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(20000));
  }
}

std::chrono::milliseconds watchdog_timeout_from_env(std::chrono::milliseconds fallback) {
  const char* text = std::getenv("DIFFTRAIN_WATCHDOG_TIMEOUT");
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const double seconds = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(seconds > 0)) {
    throw std::runtime_error("DIFFTRAIN_WATCHDOG_TIMEOUT='" + std::string(text) +
                             "' is not a positive number of seconds");
  }
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
}

}  // namespace difftrain::parallel
