// The MPI process world: initialised once per process, owned by main(). Rank, size and the
// node-local rank come from MPI itself (MPI_Comm_split_type shared), not from launcher variables,
// so mpirun, srun and PMIx launches all work, and so does a plain start without a launcher (a
// singleton world of size 1).
#pragma once

#include <chrono>
#include <string>
#include <string_view>

namespace difftrain::parallel {

class World {
 public:
  // MPI_Init_thread asking for MPI_THREAD_FUNNELED: every MPI call comes from the thread that
  // created the World (CPU backward hooks run on the thread that calls backward()). The one
  // exception is the watchdog thread's MPI_Abort, which Open MPI and MPICH accept from any thread
  // at any thread level. Throws if MPI provides less than FUNNELED. If MPI is already initialised
  // the World only reads it and does not finalise it.
  World();
  ~World();  // MPI_Finalize; MPI_Abort instead when destroyed by an exception unwinding the stack
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // rank among the processes of this node
  int local_size() const { return local_size_; }
  const std::string& hostname() const { return hostname_; }

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  std::string hostname_;
  bool owns_mpi_ = false;
};

// Prints "difftrain rank R/W (host): message" to stderr and ends the whole job: MPI_Abort
// (mpirun then kills every rank and exits non-zero), or _Exit when MPI is not initialised.
// Callable from any thread.
[[noreturn]] void abort_world(const std::string& message, int code = 1) noexcept;

// A barrier that gives up: MPI_Ibarrier on the world, polled until `timeout`. For ranks that wait
// while rank 0 writes a checkpoint (longer than a collective's watchdog timeout). Throws
// std::runtime_error naming `what` on timeout; the barrier is then still pending, so the caller
// must end the job (an exception that unwinds the World aborts it).
void barrier_with_timeout(const World& world, std::chrono::milliseconds timeout,
                          std::string_view what);

// DIFFTRAIN_WATCHDOG_TIMEOUT (seconds, may be fractional) when set, else `fallback`.
std::chrono::milliseconds watchdog_timeout_from_env(std::chrono::milliseconds fallback);

}  // namespace difftrain::parallel
