// Data-parallel gradient averaging that overlaps backward. Gradients are grouped into buckets in
// the order backward produces them (reverse registration order at first, then the order observed
// in the first synchronised backward), each bucket one flat buffer that the parameters' .grad()
// tensors are views of (with the parameter's own strides, so channels-last weights get
// channels-last gradients), so autograd accumulates straight into it and no per-step copy happens.
// When the last gradient of a bucket has been accumulated (a post-accumulate-grad hook), the
// bucket's all-reduce starts; finish() waits for all of them.
//
// Buckets are launched strictly in bucket order on every rank (a ready bucket waits for the lower
// ones), and finish() launches whatever was not launched during backward, with zeros for
// parameters that got no gradient. So every rank issues the same collectives in the same order
// even when ranks skip different parameters (unused class embeddings, conditional branches): only
// the overlap is lost then, never correctness or liveness.
//
// Threading: hooks run on the thread that runs backward for the parameters' device (CPU: the
// caller's thread, as MPI_THREAD_FUNNELED requires; CUDA: autograd's device thread, which NCCL
// does not mind). One backward at a time.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

namespace difftrain::parallel {

class Communicator;
class Watchdog;

struct GradReducerOptions {
  std::size_t bucket_bytes = std::size_t{25} << 20;
  // Smaller, so that communication starts early in backward.
  std::size_t first_bucket_bytes = std::size_t{1} << 20;
  // at::kBFloat16 or at::kHalf: wider floating buckets travel in this dtype. Each rank divides by
  // the world size before the cast, so the sum cannot overflow float16.
  std::optional<c10::ScalarType> wire_dtype;
  // Each bucket's all-reduce is announced to the watchdog as "gradient bucket i of n".
  Watchdog* watchdog = nullptr;
  // Test the buckets in flight from every hook (MPI_Test): Open MPI advances non-blocking
  // collectives mostly inside MPI calls, so without this they make little progress during
  // backward.
  bool progress_in_hooks = true;
  // After the first synchronised backward, regroup the buckets in the order the hooks fired there
  // (rank 0's order, broadcast), with parameters that got no gradient last. Without it a bucket
  // holding an unused parameter is only launched by finish(), and so are all the buckets after it.
  bool rebuild_buckets = true;
};

// What the reducer did during the last synchronised backward and finish(), in order.
struct ReducerEvent {
  enum class Kind { grad_ready, launch, complete };
  Kind kind;
  std::size_t index;  // grad_ready: parameter index; launch, complete: bucket index
  bool operator==(const ReducerEvent&) const = default;
};

class GradReducer {
 public:
  // `parameters` in registration order (module->parameters()); those that do not require grad
  // are ignored and duplicates (shared weights) count once. Existing gradients are copied into
  // the buckets. Each parameter gets a post-accumulate-grad hook (it must not have one already);
  // the destructor removes them and leaves the gradients as they are (views of freed buckets
  // that stay alive as long as the gradients do).
  GradReducer(const std::vector<at::Tensor>& parameters, Communicator& comm,
              GradReducerOptions options = {});
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Zeroes every bucket and makes every .grad() a view of its bucket again. Use it instead of
  // optimizer.zero_grad(), which (set_to_none) would make autograd allocate fresh gradients that
  // the hooks must then copy into the buckets.
  void zero_grad();

  // false: the following backward passes only accumulate locally (microbatches of gradient
  // accumulation); true (the default): the next backward communicates. Set before backward.
  void set_sync(bool sync);

  // After a synchronised backward: launches the buckets not yet launched, waits for all of them,
  // and leaves every .grad() holding the average over ranks. A no-op when sync is false.
  void finish();

  // Introspection for tests and logs.
  std::size_t num_parameters() const;  // after filtering and deduplication
  std::size_t num_buckets() const;
  std::vector<std::size_t> bucket_parameters(std::size_t bucket) const;  // parameter indices
  std::size_t bucket_bytes(std::size_t bucket) const;
  const std::vector<ReducerEvent>& trace() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace difftrain::parallel
