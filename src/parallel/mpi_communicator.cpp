// The MPI backend: CPU tensors, on a duplicate of the world communicator (so the trainer's
// collectives never match another user's of MPI_COMM_WORLD, e.g. barrier_with_timeout).
//
// bfloat16 and float16 travel as 16-bit values (a 2-byte MPI datatype) and are reduced by user
// ops that add in float32 and round back to 16 bits at each step of MPI's reduction tree. The wire
// stays half-size, which is the point of compressing gradient buckets; the price is one rounding
// per tree level (log2(W) levels), against a single one when reducing in float32.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

#include "parallel/communicator.hpp"
#include "parallel/mpi_check.hpp"
#include "parallel/watchdog.hpp"
#include "parallel/world.hpp"

namespace difftrain::parallel {
namespace {

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return "float32";
    case at::kDouble:
      return "float64";
    case at::kBFloat16:
      return "bfloat16";
    case at::kHalf:
      return "float16";
    case at::kLong:
      return "int64";
    case at::kInt:
      return "int32";
    case at::kByte:
      return "uint8";
    default:
      return std::string(c10::toString(type));
  }
}

std::string op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum:
      return "sum";
    case ReduceOp::avg:
      return "avg";
    case ReduceOp::max:
      return "max";
    case ReduceOp::min:
      return "min";
  }
  return "?";
}

std::string describe(const char* collective, const at::Tensor& tensor) {
  return std::string(collective) + " " + dtype_name(tensor.scalar_type()) + "[" +
         std::to_string(tensor.numel()) + "]";
}

// MPI user op over 16-bit floats T, combining in float32.
template <typename T, ReduceOp op>
void reduce16(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]);
    if constexpr (op == ReduceOp::sum) b[i] = static_cast<T>(x + y);
    if constexpr (op == ReduceOp::max) b[i] = static_cast<T>(std::max(x, y));
    if constexpr (op == ReduceOp::min) b[i] = static_cast<T>(std::min(x, y));
  }
}

void check_cpu(const at::Tensor& tensor, const std::string& what) {
  if (!tensor.defined()) throw std::invalid_argument(what + ": undefined tensor");
  if (!tensor.device().is_cpu()) {
    throw std::invalid_argument(what + ": the MPI backend takes CPU tensors, got " +
                                tensor.device().str());
  }
}

int checked_count(int64_t count, const std::string& what) {
  if (count > INT_MAX) {
    throw std::invalid_argument(what + ": more than INT_MAX elements in one MPI call");
  }
  return static_cast<int>(count);
}

class MpiWork final : public Work {
 public:
  MpiWork(MPI_Request request, at::Tensor tensor, int divisor, Watchdog* watchdog, std::string what)
      : request_(request),
        tensor_(std::move(tensor)),
        divisor_(divisor),
        watchdog_(watchdog),
        ticket_(watchdog ? watchdog->enter(what) : 0),
        what_(std::move(what)) {}
  ~MpiWork() override {
    // A request must not be dropped in flight: MPI would still write into the tensor.
    if (!done_) MPI_Wait(&request_, MPI_STATUS_IGNORE);
    if (!done_ && watchdog_) watchdog_->leave(ticket_);
  }

  void wait() override {
    if (done_) return;
    complete(MPI_Wait(&request_, MPI_STATUS_IGNORE));
  }
  bool test() override {
    if (done_) return true;
    int flag = 0;
    const int rc = MPI_Test(&request_, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS || flag) complete(rc);
    return done_;
  }

 private:
  void complete(int rc) {
    done_ = true;
    if (watchdog_) watchdog_->leave(ticket_);
    mpi_check(rc, what_);
    if (divisor_ > 1) tensor_.div_(divisor_);
  }

  MPI_Request request_;
  at::Tensor tensor_;
  int divisor_;
  Watchdog* watchdog_;
  Watchdog::Ticket ticket_;
  std::string what_;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(const World& world, Watchdog* watchdog) : watchdog_(watchdog) {
    mpi_check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    rank_ = world.rank();
    size_ = world.size();
    MPI_Type_contiguous(2, MPI_BYTE, &half16_);
    MPI_Type_commit(&half16_);
    MPI_Op_create(&reduce16<c10::BFloat16, ReduceOp::sum>, 1, &bf16_ops_[0]);
    MPI_Op_create(&reduce16<c10::BFloat16, ReduceOp::max>, 1, &bf16_ops_[1]);
    MPI_Op_create(&reduce16<c10::BFloat16, ReduceOp::min>, 1, &bf16_ops_[2]);
    MPI_Op_create(&reduce16<c10::Half, ReduceOp::sum>, 1, &f16_ops_[0]);
    MPI_Op_create(&reduce16<c10::Half, ReduceOp::max>, 1, &f16_ops_[1]);
    MPI_Op_create(&reduce16<c10::Half, ReduceOp::min>, 1, &f16_ops_[2]);
  }
  ~MpiCommunicator() override {
    for (MPI_Op& op : bf16_ops_)
      MPI_Op_free(&op);
    for (MPI_Op& op : f16_ops_)
      MPI_Op_free(&op);
    MPI_Type_free(&half16_);
    MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce(at::Tensor& tensor, ReduceOp op) override {
    const std::string what = describe("all_reduce", tensor) + " " + op_name(op);
    const Reduction r = prepare(tensor, op, what);
    {
      Watchdog::Scope scope(watchdog_, what);
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, tensor.data_ptr(), r.count, r.type, r.op, comm_), what);
    }
    if (r.divisor > 1) tensor.div_(r.divisor);
  }

  std::unique_ptr<Work> all_reduce_async(at::Tensor& tensor, ReduceOp op) override {
    const std::string what = describe("all_reduce", tensor) + " " + op_name(op);
    const Reduction r = prepare(tensor, op, what);
    MPI_Request request;
    mpi_check(
        MPI_Iallreduce(MPI_IN_PLACE, tensor.data_ptr(), r.count, r.type, r.op, comm_, &request),
        what);
    return std::make_unique<MpiWork>(request, tensor, r.divisor, watchdog_, what);
  }

  at::Tensor all_gather(const at::Tensor& tensor) override {
    const std::string what = describe("all_gather", tensor);
    check_cpu(tensor, what);
    const at::Tensor input = tensor.dim() == 0 ? tensor.reshape({1}) : tensor.contiguous();
    std::vector<int64_t> shape = input.sizes().vec();
    shape[0] *= size_;
    at::Tensor output = at::empty(shape, input.options());
    const int bytes = checked_count(static_cast<int64_t>(input.nbytes()), what);
    Watchdog::Scope scope(watchdog_, what);
    mpi_check(
        MPI_Allgather(input.data_ptr(), bytes, MPI_BYTE, output.data_ptr(), bytes, MPI_BYTE, comm_),
        what);
    return output;
  }

  void broadcast(at::Tensor& tensor, int root) override {
    const std::string what = describe("broadcast", tensor) + " from rank " + std::to_string(root);
    check_cpu(tensor, what);
    if (!tensor.is_contiguous()) throw std::invalid_argument(what + ": tensor not contiguous");
    const int bytes = checked_count(static_cast<int64_t>(tensor.nbytes()), what);
    Watchdog::Scope scope(watchdog_, what);
    mpi_check(MPI_Bcast(tensor.data_ptr(), bytes, MPI_BYTE, root, comm_), what);
  }

  void barrier() override {
    Watchdog::Scope scope(watchdog_, "barrier");
    mpi_check(MPI_Barrier(comm_), "barrier");
  }

 private:
  struct Reduction {
    MPI_Datatype type;
    MPI_Op op;
    int count;
    int divisor;  // avg: the sum is divided by the world size after the reduction
  };

  Reduction prepare(const at::Tensor& tensor, ReduceOp op, const std::string& what) const {
    check_cpu(tensor, what);
    if (!tensor.is_contiguous()) throw std::invalid_argument(what + ": tensor not contiguous");
    Reduction r{};
    r.count = checked_count(tensor.numel(), what);
    r.divisor = op == ReduceOp::avg ? size_ : 1;
    const int index = op == ReduceOp::max ? 1 : op == ReduceOp::min ? 2 : 0;
    r.op = op == ReduceOp::max ? MPI_MAX : op == ReduceOp::min ? MPI_MIN : MPI_SUM;
    switch (tensor.scalar_type()) {
      case at::kFloat:
        r.type = MPI_FLOAT;
        break;
      case at::kDouble:
        r.type = MPI_DOUBLE;
        break;
      case at::kLong:
        r.type = MPI_INT64_T;
        break;
      case at::kInt:
        r.type = MPI_INT32_T;
        break;
      case at::kByte:
        r.type = MPI_UINT8_T;
        break;
      case at::kBFloat16:
        r.type = half16_;
        r.op = bf16_ops_[index];
        break;
      case at::kHalf:
        r.type = half16_;
        r.op = f16_ops_[index];
        break;
      default:
        throw std::invalid_argument(what + ": dtype not supported by the MPI backend");
    }
    if (op == ReduceOp::avg && !at::isFloatingType(tensor.scalar_type())) {
      throw std::invalid_argument(what + ": avg of an integer tensor");
    }
    return r;
  }

  Watchdog* watchdog_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  MPI_Datatype half16_ = MPI_DATATYPE_NULL;
  MPI_Op bf16_ops_[3] = {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL};
  MPI_Op f16_ops_[3] = {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL};
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(const World& world, Watchdog* watchdog) {
  return std::make_unique<MpiCommunicator>(world, watchdog);
}

}  // namespace difftrain::parallel
