// The collectives the trainer needs, behind one small interface with three backends: a world of
// one process (local), MPI (CPU tensors) and NCCL (CUDA tensors). The trainer is written against
// this interface only, so it runs unchanged on 1 or N ranks.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

namespace difftrain::dist {

enum class ReduceOp { sum, avg, max, min };

// A collective in flight. wait() returns when the result is in the tensor (NCCL: when the
// compute stream is ordered after it).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;

  // In place; every rank passes a tensor of the same shape and dtype.
  virtual void all_reduce(at::Tensor& tensor, ReduceOp op) = 0;
  virtual std::unique_ptr<Work> all_reduce_async(at::Tensor& tensor, ReduceOp op) = 0;
  // Concatenation of every rank's tensor along dim 0, in rank order (same shape on every rank).
  virtual at::Tensor all_gather(const at::Tensor& tensor) = 0;
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;
};

// The world of one process: every collective is the identity.
std::unique_ptr<Communicator> make_local_communicator();

}  // namespace difftrain::dist
