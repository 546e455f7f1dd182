// The NCCL backend: CUDA tensors on one device per rank. The unique id travels from rank 0 by
// MPI_Bcast; collectives run on a dedicated stream of the device that waits (by a CUDA event) for
// the work queued so far on the caller's current stream, and Work::wait makes the current stream
// wait for the collective in turn, so the host never blocks except in barrier(). The watchdog sees
// each collective until its end event completes on the GPU, polls ncclCommGetAsyncError, and
// calls ncclCommAbort before it ends the job.
//
// Built when DIFFTRAIN_HAVE_NCCL; without it make_nccl_communicator throws.
#include <torch/cuda.h>

#include <stdexcept>
#include <string>

#include "parallel/communicator.hpp"

#ifdef DIFFTRAIN_HAVE_NCCL
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "parallel/mpi_check.hpp"
#include "parallel/watchdog.hpp"
#include "parallel/world.hpp"
#endif

namespace difftrain::parallel {

#ifdef DIFFTRAIN_HAVE_NCCL
namespace {

void cuda_check(cudaError_t rc, const std::string& what) {
  if (rc != cudaSuccess) {
    throw std::runtime_error("CUDA " + what + " failed: " + cudaGetErrorString(rc));
  }
}

void nccl_check(ncclResult_t rc, const std::string& what, ncclComm_t comm = nullptr) {
  if (rc == ncclSuccess) return;
  std::string detail = ncclGetErrorString(rc);
  if (comm != nullptr) {
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && *last != '\0') detail += " (" + std::string(last) + ")";
  }
  throw std::runtime_error("NCCL " + what + " failed: " + detail);
}

ncclDataType_t nccl_type(at::ScalarType type, const std::string& what) {
  switch (type) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kHalf:
      return ncclFloat16;
    case at::kLong:
      return ncclInt64;
    case at::kInt:
      return ncclInt32;
    case at::kByte:
      return ncclUint8;
    default:
      throw std::invalid_argument(what + ": dtype not supported by the NCCL backend");
  }
}

ncclRedOp_t nccl_op(ReduceOp op, const at::Tensor& tensor, const std::string& what) {
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::max:
      return ncclMax;
    case ReduceOp::min:
      return ncclMin;
    case ReduceOp::avg:
      if (!at::isFloatingType(tensor.scalar_type())) {
        throw std::invalid_argument(what + ": avg of an integer tensor");
      }
      return ncclAvg;
  }
  throw std::invalid_argument(what + ": unknown reduce op");
}

// A CUDA event shared between a Work and the watchdog's completion check.
struct Event {
  cudaEvent_t event = nullptr;
  Event() { cuda_check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "EventCreate"); }
  ~Event() { cudaEventDestroy(event); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<Event> end, c10::DeviceIndex device)
      : end_(std::move(end)), device_(device) {}
  void wait() override {
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device_);
    cuda_check(cudaStreamWaitEvent(current.stream(), end_->event, 0), "StreamWaitEvent");
  }
  bool test() override { return cudaEventQuery(end_->event) == cudaSuccess; }

 private:
  std::shared_ptr<Event> end_;
  c10::DeviceIndex device_;
};

std::string describe(const char* collective, const at::Tensor& tensor) {
  return std::string(collective) + " " + std::string(c10::toString(tensor.scalar_type())) + "[" +
         std::to_string(tensor.numel()) + "] (nccl)";
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const World& world, c10::Device device, Watchdog* watchdog)
      : rank_(world.rank()),
        size_(world.size()),
        device_(device.index()),
        watchdog_(watchdog),
        stream_(init_stream(device)) {
    c10::cuda::CUDAGuard guard(device_);
    ncclUniqueId id{};
    if (rank_ == 0) nccl_check(ncclGetUniqueId(&id), "GetUniqueId");
    mpi_check(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD), "Bcast(ncclUniqueId)");
    {
      Watchdog::Scope scope(watchdog_, "ncclCommInitRank");
      nccl_check(ncclCommInitRank(&comm_, size_, id, rank_), "CommInitRank");
    }
    if (watchdog_) {
      hook_ = watchdog_->add_hook([this] { return async_error(); }, [this] { abort(); });
    }
  }
  ~NcclCommunicator() override {
    if (watchdog_) watchdog_->remove_hook(hook_);
    if (!aborted_.exchange(true)) ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  void all_reduce(at::Tensor& tensor, ReduceOp op) override {
    all_reduce_async(tensor, op)->wait();
  }

  std::unique_ptr<Work> all_reduce_async(at::Tensor& tensor, ReduceOp op) override {
    std::vector<at::Tensor> tensors{tensor};
    return all_reduce_batch_async(tensors, op);
  }

  std::unique_ptr<Work> all_reduce_batch_async(std::vector<at::Tensor>& tensors,
                                               ReduceOp op) override {
    std::string what = tensors.size() == 1
                           ? describe("all_reduce", tensors[0])
                           : "all_reduce of " + std::to_string(tensors.size()) + " tensors (nccl)";
    for (const auto& tensor : tensors)
      check(tensor, what);
    return launch(tensors, what, [&] {
      // One group: NCCL fuses the launches and cannot deadlock on their order.
      nccl_check(ncclGroupStart(), "GroupStart");
      for (auto& tensor : tensors) {
        nccl_check(
            ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                          nccl_type(tensor.scalar_type(), what), nccl_op(op, tensor, what), comm_,
                          stream_.stream()),
            what, comm_);
      }
      nccl_check(ncclGroupEnd(), "GroupEnd", comm_);
    });
  }

  at::Tensor all_gather(const at::Tensor& tensor) override {
    const std::string what = describe("all_gather", tensor);
    check(tensor, what);
    c10::cuda::CUDAGuard guard(device_);
    const at::Tensor input = tensor.dim() == 0 ? tensor.reshape({1}) : tensor.contiguous();
    std::vector<int64_t> shape = input.sizes().vec();
    shape[0] *= size_;
    at::Tensor output = at::empty(shape, input.options());
    launch({input, output}, what, [&] {
      nccl_check(
          ncclAllGather(input.data_ptr(), output.data_ptr(), static_cast<size_t>(input.numel()),
                        nccl_type(input.scalar_type(), what), comm_, stream_.stream()),
          what, comm_);
    })->wait();
    return output;
  }

  void broadcast(at::Tensor& tensor, int root) override {
    const std::string what = describe("broadcast", tensor);
    check(tensor, what);
    launch({tensor}, what, [&] {
      nccl_check(
          ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                        nccl_type(tensor.scalar_type(), what), root, comm_, stream_.stream()),
          what, comm_);
    })->wait();
  }

  // The host waits, polling the end event and NCCL's asynchronous error so that a failed peer
  // becomes an exception here (the watchdog covers a peer that never arrives).
  void barrier() override {
    c10::cuda::CUDAGuard guard(device_);
    at::Tensor one = at::ones({1}, at::TensorOptions().device(c10::kCUDA, device_));
    auto work = all_reduce_async(one, ReduceOp::sum);
    while (!work->test()) {
      if (std::string error = async_error(); !error.empty()) throw std::runtime_error(error);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  void abort() override {
    if (!aborted_.exchange(true)) ncclCommAbort(comm_);
  }

 private:
  static c10::cuda::CUDAStream init_stream(c10::Device device) {
    if (!device.is_cuda() || !device.has_index()) {
      throw std::invalid_argument("NCCL communicator: needs a CUDA device with an index, got " +
                                  device.str());
    }
    if (device.index() >= static_cast<int>(torch::cuda::device_count())) {
      throw std::invalid_argument("NCCL communicator: no device " + device.str());
    }
    cuda_check(cudaSetDevice(device.index()), "SetDevice");
    return c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device.index());
  }

  void check(const at::Tensor& tensor, const std::string& what) const {
    if (!tensor.defined() || !tensor.is_cuda() || tensor.device().index() != device_) {
      throw std::invalid_argument(
          what + ": the NCCL backend takes tensors on cuda:" + std::to_string(device_));
    }
    if (!tensor.is_contiguous()) throw std::invalid_argument(what + ": tensor not contiguous");
  }

  // Runs `issue` on the communication stream after the work queued on the current stream, and
  // returns a Work whose wait() orders the current stream after it.
  template <typename Issue>
  std::unique_ptr<Work> launch(const std::vector<at::Tensor>& tensors, std::string what,
                               Issue&& issue) {
    if (aborted_) throw std::runtime_error(what + ": the NCCL communicator was aborted");
    c10::cuda::CUDAGuard guard(device_);
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device_);
    Event ready;
    cuda_check(cudaEventRecord(ready.event, current.stream()), "EventRecord");
    cuda_check(cudaStreamWaitEvent(stream_.stream(), ready.event, 0), "StreamWaitEvent");
    // The caching allocator must not hand the memory to the compute stream while NCCL uses it.
    for (const auto& tensor : tensors) {
      c10::cuda::CUDACachingAllocator::recordStream(tensor.storage().data_ptr(), stream_);
    }
    issue();
    auto end = std::make_shared<Event>();
    cuda_check(cudaEventRecord(end->event, stream_.stream()), "EventRecord");
    if (watchdog_) {
      // Closed by the watchdog when the GPU has finished the collective (or failed it).
      watchdog_->enter(std::move(what),
                       [end] { return cudaEventQuery(end->event) != cudaErrorNotReady; });
    }
    return std::make_unique<NcclWork>(std::move(end), device_);
  }

  std::string async_error() const {
    if (aborted_) return "";
    ncclResult_t result = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &result) != ncclSuccess) return "";
    if (result == ncclSuccess || result == ncclInProgress) return "";
    const char* last = ncclGetLastError(comm_);
    return "NCCL asynchronous error on rank " + std::to_string(rank_) + ": " +
           ncclGetErrorString(result) + (last && *last ? " (" + std::string(last) + ")" : "");
  }

  int rank_, size_;
  c10::DeviceIndex device_;
  Watchdog* watchdog_;
  c10::cuda::CUDAStream stream_;
  ncclComm_t comm_ = nullptr;
  std::atomic<bool> aborted_{false};
  int hook_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const World& world, c10::Device device,
                                                     Watchdog* watchdog) {
  return std::make_unique<NcclCommunicator>(world, device, watchdog);
}

std::string nccl_unavailable_reason() {
  if (torch::cuda::device_count() == 0) return "no CUDA device is visible";
  return "";
}

#else  // !DIFFTRAIN_HAVE_NCCL

std::unique_ptr<Communicator> make_nccl_communicator(const World&, c10::Device device, Watchdog*) {
  throw std::runtime_error("no NCCL backend for " + device.str() + ": " +
                           nccl_unavailable_reason());
}

std::string nccl_unavailable_reason() {
  return "the NCCL backend is not built (DIFFTRAIN_NCCL=OFF or a CPU build of LibTorch)";
}

#endif

}  // namespace difftrain::parallel
