// The collectives the trainer needs, behind one small interface with three backends: a world of
// one process (local), MPI (CPU tensors) and NCCL (CUDA tensors). The trainer is written against
// this interface only, so it runs unchanged on 1 or N ranks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <memory>
#include <string>
#include <vector>

namespace difftrain::parallel {

class World;
class Watchdog;

enum class ReduceOp { sum, avg, max, min };

// A collective in flight. wait() returns when the result is in the tensor (NCCL: when the
// compute stream is ordered after it).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  // Non-blocking. True once the result is in the tensor (wait() then returns at once); false while
  // in flight or when the backend cannot tell. With MPI this also drives the collective forward,
  // which Open MPI otherwise does mostly inside MPI calls.
  virtual bool test() { return false; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;

  // In place; every rank passes a contiguous tensor of the same shape and dtype. avg of integer
  // tensors is refused.
  virtual void all_reduce(at::Tensor& tensor, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> all_reduce_async(at::Tensor& tensor, ReduceOp op) = 0;
  // Several tensors as one batch (NCCL: one ncclGroupStart/End), one Work for all of them. The
  // default issues one all_reduce_async per tensor, in order.
  virtual std::unique_ptr<Work> all_reduce_batch_async(std::vector<at::Tensor>& tensors,
                                                       ReduceOp op);
  // Concatenation of every rank's tensor along dim 0, in rank order (same shape on every rank; a
  // 0-dim tensor counts as shape [1]).
  virtual at::Tensor all_gather(const at::Tensor& tensor) = 0;
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;
  // Abandons collectives in flight so the process can exit (NCCL: ncclCommAbort). The
  // communicator is unusable afterwards. Called by the watchdog before it aborts the job.
  virtual void abort() {}
};

// The world of one process: every collective is the identity.
std::unique_ptr<Communicator> make_local_communicator();

// CPU tensors over MPI, on a duplicate of the world communicator. Collectives announce themselves
// to `watchdog` when one is given.
std::unique_ptr<Communicator> make_mpi_communicator(const World& world,
                                                    Watchdog* watchdog = nullptr);

// CUDA tensors on `device` over NCCL; the unique id travels from rank 0 by MPI_Bcast. Throws when
// the NCCL backend is not built or there is no such device.
std::unique_ptr<Communicator> make_nccl_communicator(const World& world, c10::Device device,
                                                     Watchdog* watchdog = nullptr);

// NCCL for a CUDA device, else local for a world of one process, else MPI.
std::unique_ptr<Communicator> make_communicator(const World& world, c10::Device device,
                                                Watchdog* watchdog = nullptr);

// Whether make_nccl_communicator can work in this process: "" when it can, else why not (not
// built, no CUDA device). Needs no GPU.
std::string nccl_unavailable_reason();

}  // namespace difftrain::parallel
