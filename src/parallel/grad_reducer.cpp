#include "parallel/grad_reducer.hpp"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <unordered_set>

#include "parallel/communicator.hpp"
#include "parallel/watchdog.hpp"

namespace difftrain::parallel {

namespace {

// The parameter's slice of a flat bucket, with the parameter's own strides (as DDP's
// as_strided): a channels-last weight gets a channels-last gradient. Autograd accumulates into
// the view as it is, and fused optimizers walk parameter and gradient memory with one index, so a
// gradient laid out differently from its parameter would update each weight with another
// element's gradient. Dense parameters of any layout fill exactly numel elements of the slice;
// the rare overlapping or gapped one gets a contiguous gradient, as autograd would give it.
at::Tensor bucket_view(const at::Tensor& buffer, const at::Tensor& param, std::int64_t offset) {
  if (param.is_non_overlapping_and_dense())
    return buffer.as_strided(param.sizes(), param.strides(), offset);
  return buffer.narrow(0, offset, param.numel()).view(param.sizes());
}

}  // namespace

struct GradReducer::State {
  struct Param {
    at::Tensor tensor;
    at::Tensor view;  // its slice of the bucket, shaped like the parameter
    std::size_t bucket = 0;
    bool ready = false;  // its gradient is final for this synchronised backward
  };
  struct Bucket {
    at::Tensor buffer;  // flat; the parameters' gradients view into it
    at::Tensor wire;    // the compressed copy that travels, when compressing
    std::vector<std::size_t> params;
    std::size_t pending = 0;  // parameters not ready yet
    std::shared_ptr<Work> work;
    Watchdog::Ticket ticket = 0;
    bool launched = false, complete = false;
  };

  Communicator& comm;
  GradReducerOptions options;
  std::vector<Param> params;
  std::vector<Bucket> buckets;
  std::size_t next_launch = 0;
  bool sync = true;
  bool in_backward = false;  // a synchronised backward has started and finish() not yet run
  std::vector<ReducerEvent> trace;
  bool rebuilt = false;                  // the first synchronised backward has been seen
  std::vector<std::size_t> ready_order;  // parameter indices in hook order during it

  State(Communicator& c, GradReducerOptions o) : comm(c), options(o) {}

  // Makes the parameter's gradient its bucket view again, keeping the gradient's value (autograd
  // replaces rather than accumulates when the gradient was reset to undefined, or in
  // double-backward mode).
  void adopt(Param& p) {
    at::Tensor& grad = p.tensor.mutable_grad();
    if (grad.is_same(p.view)) return;
    if (grad.defined()) {
      p.view.copy_(grad);
    } else {
      p.view.zero_();
    }
    grad = p.view;
  }

  void on_grad_ready(std::size_t index) {
    Param& p = params[index];
    if (!sync) {  // an accumulation microbatch
      adopt(p);
      return;
    }
    if (!in_backward) {
      in_backward = true;
      trace.clear();
    }
    if (p.ready) {
      throw std::runtime_error("GradReducer: parameter " + std::to_string(index) +
                               " got a second gradient in one synchronised backward after its "
                               "bucket may have been sent; use set_sync(false) for all but the "
                               "last backward");
    }
    adopt(p);
    p.ready = true;
    if (!rebuilt) ready_order.push_back(index);
    trace.push_back({ReducerEvent::Kind::grad_ready, index});
    if (--buckets[p.bucket].pending == 0) launch_ready();
    if (options.progress_in_hooks) poll();
  }

  // Launches the run of ready buckets that starts at next_launch, as one batch (several buckets
  // become ready at once in finish(), or when a bucket waited for a lower one).
  void launch_ready() {
    std::size_t start = next_launch;
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0)
      ++next_launch;
    while (start < next_launch) {
      // Compressed buckets are summed (already averaged), full-width ones averaged: one op per
      // batch, so a batch is a run of buckets of one kind.
      const bool wire = buckets[start].wire.defined();
      std::vector<at::Tensor> tensors;
      std::size_t end = start;
      for (; end < next_launch && buckets[end].wire.defined() == wire; ++end) {
        Bucket& bucket = buckets[end];
        if (wire) {
          // Average before the cast: the sum of W ranks' values may not fit in float16.
          bucket.buffer.div_(comm.size());
          bucket.wire.copy_(bucket.buffer);
        }
        tensors.push_back(wire ? bucket.wire : bucket.buffer);
        announce(end);
      }
      const ReduceOp op = wire ? ReduceOp::sum : ReduceOp::avg;
      std::shared_ptr<Work> work = tensors.size() == 1 ? comm.all_reduce_async(tensors[0], op)
                                                       : comm.all_reduce_batch_async(tensors, op);
      for (std::size_t b = start; b < end; ++b)
        buckets[b].work = work;
      start = end;
    }
  }

  void announce(std::size_t b) {
    Bucket& bucket = buckets[b];
    bucket.launched = true;
    trace.push_back({ReducerEvent::Kind::launch, b});
    if (options.watchdog) {
      char mb[32];
      std::snprintf(mb, sizeof mb, "%.2f MB",
                    static_cast<double>(bucket.buffer.nbytes()) / (1 << 20));
      bucket.ticket =
          options.watchdog->enter("all_reduce of gradient bucket " + std::to_string(b) + " of " +
                                  std::to_string(buckets.size()) + " (" + mb + ")");
    }
  }

  void complete(std::size_t b) {
    Bucket& bucket = buckets[b];
    if (bucket.wire.defined()) bucket.buffer.copy_(bucket.wire);
    bucket.complete = true;
    bucket.work.reset();
    if (options.watchdog) options.watchdog->leave(bucket.ticket);
    trace.push_back({ReducerEvent::Kind::complete, b});
  }

  // Drives the buckets in flight forward (MPI_Test) and completes those that are done.
  void poll() {
    for (std::size_t b = 0; b < next_launch; ++b) {
      Bucket& bucket = buckets[b];
      if (bucket.launched && !bucket.complete && bucket.work->test()) complete(b);
    }
  }

  void finish() {
    if (!sync) return;
    if (!in_backward) trace.clear();  // no gradient arrived: a fresh trace all the same
    for (Param& p : params) {
      if (p.ready) continue;
      adopt(p);  // no gradient this backward: zeros, or the microbatches' sum, or what was set
      p.ready = true;
      --buckets[p.bucket].pending;
    }
    launch_ready();
    for (std::size_t b = 0; b < buckets.size(); ++b) {
      Bucket& bucket = buckets[b];
      if (bucket.complete) continue;
      bucket.work->wait();
      complete(b);
    }
    reset();
    if (!rebuilt) {
      rebuilt = true;
      if (options.rebuild_buckets && !params.empty()) rebuild();
    }
  }

  void reset() {
    for (Param& p : params)
      p.ready = false;
    for (Bucket& bucket : buckets) {
      bucket.pending = bucket.params.size();
      bucket.launched = bucket.complete = false;
      bucket.work.reset();
    }
    next_launch = 0;
    in_backward = false;
  }

  // Autograd calls it after accumulating the parameter's gradient.
  struct ReadyHook final : torch::autograd::PostAccumulateGradHook {
    ReadyHook(State* state, std::size_t index) : state(state), index(index) {}
    void operator()(const torch::autograd::Variable&) override { state->on_grad_ready(index); }
    State* state;
    std::size_t index;
  };

  // Groups the parameters into buckets in `order` and moves each gradient into its new view.
  void assign(const std::vector<std::size_t>& order) {
    std::vector<Bucket> fresh;
    std::size_t bytes = 0;
    for (const std::size_t i : order) {
      const at::Tensor& p = params[i].tensor;
      const std::size_t size = p.nbytes();
      const std::size_t cap = fresh.size() <= 1 ? options.first_bucket_bytes : options.bucket_bytes;
      bool open = fresh.empty();
      if (!open) {
        const at::Tensor& first = params[fresh.back().params.front()].tensor;
        open = bytes + size > cap || first.scalar_type() != p.scalar_type() ||
               first.device() != p.device();
      }
      if (open) {
        fresh.emplace_back();
        bytes = 0;
      }
      fresh.back().params.push_back(i);
      bytes += size;
    }
    for (std::size_t b = 0; b < fresh.size(); ++b) {
      Bucket& bucket = fresh[b];
      const at::Tensor& first = params[bucket.params.front()].tensor;
      std::int64_t numel = 0;
      for (const std::size_t i : bucket.params)
        numel += params[i].tensor.numel();
      bucket.buffer = at::zeros({numel}, first.options().requires_grad(false));
      if (options.wire_dtype && at::isFloatingType(first.scalar_type()) &&
          static_cast<std::size_t>(first.element_size()) > at::elementSize(*options.wire_dtype)) {
        bucket.wire = at::empty({numel}, bucket.buffer.options().dtype(*options.wire_dtype));
      }
      std::int64_t offset = 0;
      for (const std::size_t i : bucket.params) {
        Param& p = params[i];
        p.bucket = b;
        p.view = bucket_view(bucket.buffer, p.tensor, offset);
        offset += p.tensor.numel();
        adopt(p);
      }
      bucket.pending = bucket.params.size();
    }
    buckets = std::move(fresh);
  }

  // After the first synchronised backward: buckets in the order the gradients became ready, so
  // that bucket 0 is really the first one complete (an unused parameter registered last would
  // otherwise hold back every launch). Rank 0's order is broadcast: all ranks must agree.
  void rebuild() {
    std::vector<std::int64_t> order;
    std::vector<bool> seen(params.size(), false);
    for (const std::size_t i : ready_order) {
      order.push_back(static_cast<std::int64_t>(i));
      seen[i] = true;
    }
    for (std::size_t i = params.size(); i-- > 0;) {
      if (!seen[i]) order.push_back(static_cast<std::int64_t>(i));
    }
    ready_order.clear();
    at::Tensor shared = at::tensor(order, at::kLong).to(buckets.at(0).buffer.device());
    comm.broadcast(shared, 0);
    shared = shared.cpu();
    std::vector<std::size_t> agreed(params.size());
    std::vector<std::size_t> current;
    for (std::size_t k = 0; k < agreed.size(); ++k) {
      agreed[k] =
          static_cast<std::size_t>(shared[static_cast<std::int64_t>(k)].item<std::int64_t>());
    }
    for (const Bucket& bucket : buckets) {
      current.insert(current.end(), bucket.params.begin(), bucket.params.end());
    }
    if (agreed != current) assign(agreed);
  }

  void check_idle(const char* what) const {
    if (in_backward) {
      throw std::logic_error(std::string("GradReducer::") + what +
                             " during a synchronised backward (call finish() first)");
    }
  }
};

GradReducer::GradReducer(const std::vector<at::Tensor>& parameters, Communicator& comm,
                         GradReducerOptions options)
    : state_(std::make_unique<State>(comm, options)) {
  if (options.wire_dtype && *options.wire_dtype != at::kBFloat16 &&
      *options.wire_dtype != at::kHalf) {
    throw std::invalid_argument("GradReducer: wire_dtype must be bfloat16 or float16");
  }
  std::unordered_set<const void*> seen;
  for (const at::Tensor& p : parameters) {
    if (!p.defined() || !p.requires_grad()) continue;
    if (!p.is_leaf()) throw std::invalid_argument("GradReducer: a parameter is not a leaf tensor");
    if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
    if (torch::autograd::impl::post_acc_grad_hooks(p) != nullptr) {
      throw std::invalid_argument(
          "GradReducer: a parameter already has a post-accumulate-grad "
          "hook (another GradReducer?)");
    }
    state_->params.push_back({p, {}, 0, false});
  }

  // Reverse registration order approximates the order backward produces gradients; finish()
  // replaces it with the observed order after the first synchronised backward.
  std::vector<std::size_t> order(state_->params.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = order.size() - 1 - i;
  state_->assign(order);
  for (std::size_t i = 0; i < state_->params.size(); ++i) {
    torch::autograd::impl::set_post_acc_grad_hooks(
        state_->params[i].tensor, std::make_unique<State::ReadyHook>(state_.get(), i));
  }
}

GradReducer::~GradReducer() {
  for (State::Param& p : state_->params) {
    torch::autograd::impl::set_post_acc_grad_hooks(p.tensor, nullptr);
  }
  // Collectives still in flight must finish before their buffers go (Work destructors wait).
  for (State::Bucket& bucket : state_->buckets) {
    if (bucket.work && state_->options.watchdog) state_->options.watchdog->leave(bucket.ticket);
  }
}

void GradReducer::zero_grad() {
  state_->check_idle("zero_grad");
  for (State::Bucket& bucket : state_->buckets)
    bucket.buffer.zero_();
  for (State::Param& p : state_->params)
    p.tensor.mutable_grad() = p.view;
}

void GradReducer::set_sync(bool sync) {
  state_->check_idle("set_sync");
  state_->sync = sync;
}
void GradReducer::finish() {
  state_->finish();
}

std::size_t GradReducer::num_parameters() const {
  return state_->params.size();
}
std::size_t GradReducer::num_buckets() const {
  return state_->buckets.size();
}
std::vector<std::size_t> GradReducer::bucket_parameters(std::size_t bucket) const {
  return state_->buckets.at(bucket).params;
}
std::size_t GradReducer::bucket_bytes(std::size_t bucket) const {
  return state_->buckets.at(bucket).buffer.nbytes();
}
const std::vector<ReducerEvent>& GradReducer::trace() const {
  return state_->trace;
}

}  // namespace difftrain::parallel
