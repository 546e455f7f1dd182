// Multi-rank tests of src/parallel, run under mpirun with 2 and 3 ranks and without mpirun (a
// singleton world of one rank). Each collective test runs on CPU (MPI) and, where every rank has
// a GPU, on CUDA (NCCL); the CUDA cases are skipped here, saying why.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <thread>

#include "mpi_gtest_main.hpp"
#include "parallel/broadcast_parameters.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_reducer.hpp"
#include "parallel/rank_device.hpp"
#include "parallel/watchdog.hpp"
#include "parallel/world.hpp"
#include "test_models.hpp"

namespace difftrain::parallel {
namespace {

using namespace std::chrono_literals;
using testing::SmallNet;

class Collectives : public ::testing::TestWithParam<c10::DeviceType> {
 protected:
  void SetUp() override {
    if (GetParam() == c10::kCUDA) {
      const std::string why_not = nccl_unavailable_reason();
      if (!why_not.empty()) GTEST_SKIP() << "NCCL case skipped: " << why_not;
      // More ranks than GPUs (the GPU check's 2 ranks on one GPU) share GPU 0 on purpose.
      const bool share = g_world->local_size() > static_cast<int>(torch::cuda::device_count());
      device_ = rank_device(*g_world, parse_device_request(share ? "cuda:0" : "auto"));
      comm_ = make_nccl_communicator(*g_world, device_, g_watchdog);
    } else {
      comm_ = make_mpi_communicator(*g_world, g_watchdog);
    }
    rank_ = comm_->rank();
    size_ = comm_->size();
  }
  // A tensor of `n` elements all equal to rank + 1.
  at::Tensor ranked(torch::Dtype dtype, int64_t n = 1000) const {
    return torch::full({n}, rank_ + 1, torch::TensorOptions().dtype(dtype).device(device_));
  }
  double value(const at::Tensor& t) const { return t.to(torch::kDouble).mean().item<double>(); }

  c10::Device device_{c10::kCPU};
  std::unique_ptr<Communicator> comm_;
  int rank_ = 0, size_ = 1;
};

TEST_P(Collectives, AllReduceSumAvgMaxMin) {
  const double w = size_;
  for (const auto dtype : {torch::kFloat, torch::kDouble, torch::kBFloat16, torch::kHalf}) {
    SCOPED_TRACE(c10::toString(dtype));
    at::Tensor t = ranked(dtype);
    comm_->all_reduce(t, ReduceOp::sum);
    EXPECT_EQ(value(t), w * (w + 1) / 2);
    t = ranked(dtype);
    comm_->all_reduce(t, ReduceOp::avg);
    EXPECT_EQ(value(t), (w + 1) / 2);
    t = ranked(dtype);
    comm_->all_reduce(t, ReduceOp::max);
    EXPECT_EQ(value(t), w);
    t = ranked(dtype);
    comm_->all_reduce(t, ReduceOp::min);
    EXPECT_EQ(value(t), 1.0);
  }
  at::Tensor i = ranked(torch::kLong);
  comm_->all_reduce(i, ReduceOp::sum);
  EXPECT_EQ(i[0].item<int64_t>(), size_ * (size_ + 1) / 2);
  EXPECT_THROW(comm_->all_reduce(i, ReduceOp::avg), std::invalid_argument);
}

TEST_P(Collectives, AsyncAllReduceAndBatches) {
  at::Tensor a = ranked(torch::kFloat, 1 << 20), b = ranked(torch::kDouble, 7);
  auto work_a = comm_->all_reduce_async(a, ReduceOp::avg);
  auto work_b = comm_->all_reduce_async(b, ReduceOp::sum);
  while (!work_b->test())
    std::this_thread::yield();
  work_a->wait();
  work_a->wait();  // twice is fine
  EXPECT_EQ(value(a), (size_ + 1) / 2.0);
  EXPECT_EQ(value(b), size_ * (size_ + 1) / 2.0);
  std::vector<at::Tensor> batch{ranked(torch::kFloat, 10), ranked(torch::kFloat, 20)};
  comm_->all_reduce_batch_async(batch, ReduceOp::max)->wait();
  EXPECT_EQ(value(batch[0]), size_);
  EXPECT_EQ(value(batch[1]), size_);
}

TEST_P(Collectives, AllGatherBroadcastBarrier) {
  const at::Tensor mine = ranked(torch::kFloat, 6).view({2, 3});
  const at::Tensor all = comm_->all_gather(mine).cpu();
  ASSERT_EQ(all.sizes(), at::IntArrayRef({2 * size_, 3}));
  for (int r = 0; r < size_; ++r) {
    EXPECT_TRUE(all.slice(0, 2 * r, 2 * r + 2).eq(r + 1).all().item<bool>()) << "rank " << r;
  }
  const at::Tensor scalars = comm_->all_gather(torch::tensor(int64_t{rank_}).to(device_)).cpu();
  EXPECT_TRUE(scalars.equal(torch::arange(size_, torch::kLong)));

  const int root = size_ - 1;
  at::Tensor t = ranked(torch::kBFloat16, 5);
  comm_->broadcast(t, root);
  EXPECT_EQ(value(t), root + 1);
  comm_->barrier();
}

INSTANTIATE_TEST_SUITE_P(Devices, Collectives, ::testing::Values(c10::kCPU, c10::kCUDA),
                         [](const auto& info) { return c10::DeviceTypeName(info.param, true); });

TEST(BroadcastParameters, CopiesRootValuesAndNamesShapeMismatch) {
  auto comm = make_mpi_communicator(*g_world, g_watchdog);
  const int rank = comm->rank();
  torch::manual_seed(rank);  // different values on every rank
  std::vector<NamedTensor> params{{"w", torch::randn({3, 4})}, {"b", torch::randn({4})}};
  std::vector<NamedTensor> buffers{{"count", torch::full({1}, int64_t{rank})}};
  broadcast_parameters(*comm, params, buffers);
  torch::manual_seed(0);
  EXPECT_TRUE(params[0].tensor.equal(torch::randn({3, 4})));
  EXPECT_EQ(buffers[0].tensor.item<int64_t>(), 0);

  if (comm->size() == 1) return;
  std::vector<NamedTensor> odd{{"w", torch::zeros({3, 4})},
                               {"fc.weight", torch::zeros({rank == 1 ? 5 : 4})}};
  try {
    broadcast_parameters(*comm, odd, {});
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 1"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'fc.weight'"), std::string::npos) << e.what();
  }
}

// `auto` on every rank: the ranks of each node gather their GPUs' UUIDs (none on a CPU machine)
// and, as they see the same GPUs, map local rank r to GPU r; more ranks than GPUs (the GPU
// check's 2 ranks on one GPU) is the error that says how to bind GPUs to ranks. No rank hangs.
TEST(RankDevice, AutoOnEveryRankGathersTheNodesGpus) {
  const int gpus = static_cast<int>(torch::cuda::device_count());
  try {
    const c10::Device device = rank_device(*g_world, parse_device_request("auto"));
    EXPECT_LE(g_world->local_size(), gpus > 0 ? gpus : g_world->local_size());
    EXPECT_EQ(device,
              gpus == 0
                  ? c10::Device(c10::kCPU)
                  : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(g_world->local_rank())));
  } catch (const std::invalid_argument& e) {
    EXPECT_GT(g_world->local_size(), gpus) << e.what();
    EXPECT_NE(std::string(e.what()).find("bind a GPU to each rank"), std::string::npos) << e.what();
  }
  // Every rank got here: the gather ended on all of them.
  barrier_with_timeout(*g_world, 10s, "after rank_device");
}

// The gather behind it, with made-up UUIDs: rank r has r + 1 of them (16 bytes, NUL bytes too),
// and every rank gets every local rank's, in local rank order (the tests' ranks share one node).
TEST(RankDevice, UuidsGatherOnTheNodeInLocalRankOrder) {
  const auto uuids_of = [](int rank) {
    std::vector<std::string> uuids;
    for (int i = 0; i <= rank; ++i) {
      std::string uuid(16, static_cast<char>('a' + rank));
      uuid.back() = static_cast<char>(i);
      uuids.push_back(uuid);
    }
    return uuids;
  };
  const auto all = gather_uuids_on_node(uuids_of(g_world->local_rank()));
  ASSERT_EQ(static_cast<int>(all.size()), g_world->local_size());
  for (int r = 0; r < g_world->local_size(); ++r)
    EXPECT_EQ(all[static_cast<std::size_t>(r)], uuids_of(r)) << "local rank " << r;
  EXPECT_EQ(gpus_bound_per_rank(all), g_world->local_size() > 1);
}

TEST(BarrierWithTimeout, PassesAndTimesOut) {
  barrier_with_timeout(*g_world, 10s, "checkpoint");
  if (g_world->size() == 1) return;
  if (g_world->rank() == 0) {
    std::this_thread::sleep_for(3s);  // "writing a checkpoint"
    barrier_with_timeout(*g_world, 10s, "checkpoint at step 3");
  } else {
    const auto start = std::chrono::steady_clock::now();
    try {
      barrier_with_timeout(*g_world, 200ms, "checkpoint at step 3");
      ADD_FAILURE() << "no timeout";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("checkpoint at step 3"), std::string::npos);
    }
    EXPECT_LT(std::chrono::steady_clock::now() - start, 2500ms);
  }
  make_mpi_communicator(*g_world)->barrier();
}

// The reducer against a plain all-reduce (average) of each rank's local gradients.
struct Reference {
  std::vector<at::Tensor> grads;
};

Reference reference(SmallNet& net, Communicator& comm, int microbatches, bool use_embedding) {
  const auto params = net->parameters();
  for (auto& p : params)
    p.mutable_grad().reset();
  for (int m = 0; m < microbatches; ++m) {
    testing::loss_of(net, testing::batch(comm.rank(), m), use_embedding).backward();
  }
  Reference ref;
  for (auto& p : params) {
    at::Tensor g = p.grad().defined() ? p.grad().clone() : torch::zeros_like(p);
    comm.all_reduce(g, ReduceOp::avg);
    ref.grads.push_back(g);
    p.mutable_grad().reset();
  }
  return ref;
}

GradReducerOptions small_buckets() {
  GradReducerOptions options;
  options.bucket_bytes = 64 << 10;
  options.first_bucket_bytes = 16 << 10;
  options.watchdog = g_watchdog;
  return options;
}

void expect_grads(SmallNet& net, const Reference& ref, double rtol, double atol) {
  const auto params = net->parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    const at::Tensor diff = (params[i].grad() - ref.grads[i]).abs();
    const double scale = ref.grads[i].abs().max().item<double>();
    EXPECT_LE(diff.max().item<double>(), atol + rtol * scale) << "parameter " << i;
  }
}

TEST(GradReducer, MatchesPlainAllReduceAndOverlapsBackward) {
  auto comm = make_mpi_communicator(*g_world, g_watchdog);
  SmallNet net = testing::make_net();
  const Reference ref = reference(net, *comm, 1, true);
  GradReducer reducer(net->parameters(), *comm, small_buckets());
  ASSERT_GE(reducer.num_buckets(), 4u);
  for (int step = 0; step < 3; ++step) {
    g_watchdog->set_step(step);
    reducer.zero_grad();
    testing::loss_of(net, testing::batch(comm->rank()), true).backward();
    reducer.finish();
    expect_grads(net, ref, 1e-5, 1e-8);
  }
  const auto& trace = reducer.trace();
  std::size_t first_launch = trace.size(), last_ready = 0;
  for (std::size_t e = 0; e < trace.size(); ++e) {
    if (trace[e].kind == ReducerEvent::Kind::launch) first_launch = std::min(first_launch, e);
    if (trace[e].kind == ReducerEvent::Kind::grad_ready) last_ready = e;
  }
  EXPECT_LT(first_launch, last_ready) << "the first bucket was launched after backward";
}

TEST(GradReducer, AccumulationCommunicatesOnlyOnTheLastMicrobatch) {
  auto mpi = make_mpi_communicator(*g_world, g_watchdog);
  testing::CountingCommunicator comm(*mpi);
  SmallNet net = testing::make_net();
  const Reference ref = reference(net, *mpi, 3, false);
  GradReducer reducer(net->parameters(), comm, small_buckets());
  const auto buckets = static_cast<int>(reducer.num_buckets());  // finish() may regroup them
  reducer.zero_grad();
  for (int m = 0; m < 3; ++m) {
    reducer.set_sync(m == 2);
    testing::loss_of(net, testing::batch(comm.rank(), m)).backward();
    if (m < 2) {
      EXPECT_EQ(comm.all_reduces, 0) << "microbatch " << m;
    }
    reducer.finish();
  }
  EXPECT_EQ(comm.all_reduces, buckets);
  expect_grads(net, ref, 1e-5, 1e-8);
}

TEST(GradReducer, UnusedParametersDoNotHangEvenWhenRanksDiffer) {
  auto comm = make_mpi_communicator(*g_world, g_watchdog);
  SmallNet net = testing::make_net();
  // The embedding is used on odd ranks only: ranks produce different sets of gradients.
  const bool use = comm->rank() % 2 == 1;
  const Reference ref = reference(net, *comm, 1, use);
  GradReducer reducer(net->parameters(), *comm, small_buckets());
  reducer.zero_grad();
  testing::loss_of(net, testing::batch(comm->rank()), use).backward();
  reducer.finish();
  expect_grads(net, ref, 1e-5, 1e-8);
}

TEST(GradReducer, Bfloat16WireIsCloseToFloat32) {
  auto comm = make_mpi_communicator(*g_world, g_watchdog);
  SmallNet net = testing::make_net();
  const Reference ref = reference(net, *comm, 1, false);
  for (const auto wire : {at::kBFloat16, at::kHalf}) {
    GradReducerOptions options = small_buckets();
    options.wire_dtype = wire;
    GradReducer reducer(net->parameters(), *comm, options);
    reducer.zero_grad();
    testing::loss_of(net, testing::batch(comm->rank())).backward();
    reducer.finish();
    // bfloat16 keeps 8 significant bits; one rounding per reduction step.
    expect_grads(net, ref, wire == at::kBFloat16 ? 2e-2 : 4e-3, 1e-6);
  }
}

}  // namespace
}  // namespace difftrain::parallel
