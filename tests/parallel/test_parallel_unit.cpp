// Single-process tests of src/parallel: the watchdog, the local communicator, the gradient
// reducer's bucketing and hook mechanics, and the NCCL backend's presence in the binary.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "parallel/communicator.hpp"
#include "parallel/grad_reducer.hpp"
#include "parallel/rank_device.hpp"
#include "parallel/runtime_info.hpp"
#include "parallel/watchdog.hpp"
#include "parallel/world.hpp"
#include "test_models.hpp"

namespace difftrain::parallel {
namespace {

using namespace std::chrono_literals;
using testing::SmallNet;

// The watchdog's action, recorded instead of ending the process.
struct Fired {
  std::mutex mutex;
  std::vector<std::string> messages;
  Watchdog::Action action() {
    return [this](const std::string& m) {
      std::lock_guard lock(mutex);
      messages.push_back(m);
    };
  }
  std::size_t count() {
    std::lock_guard lock(mutex);
    return messages.size();
  }
};

TEST(Watchdog, FiresNamingTheCollectiveAndStep) {
  Fired fired;
  Watchdog watchdog(50ms, fired.action());
  watchdog.set_step(42);
  const auto ticket = watchdog.enter("all_reduce of gradient bucket 3 of 7");
  for (int i = 0; i < 100 && fired.count() == 0; ++i)
    std::this_thread::sleep_for(10ms);
  watchdog.leave(ticket);
  ASSERT_EQ(fired.count(), 1u);
  EXPECT_NE(fired.messages[0].find("all_reduce of gradient bucket 3 of 7 at step 42"),
            std::string::npos)
      << fired.messages[0];
}

TEST(Watchdog, QuietWhenCollectivesLeaveInTime) {
  Fired fired;
  Watchdog watchdog(2s, fired.action());
  for (int i = 0; i < 20; ++i) {
    Watchdog::Scope scope(&watchdog, "barrier");
    std::this_thread::sleep_for(10ms);
  }
  std::atomic<bool> done{false};
  watchdog.enter("nccl all_reduce", [&] { return done.load(); });
  done = true;  // closed by the predicate, never by leave()
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(fired.count(), 0u);
}

TEST(Watchdog, ReportsAsynchronousErrorsFromHooks) {
  Fired fired;
  Watchdog watchdog(10s, fired.action());
  std::atomic<bool> broken{false};
  const int id = watchdog.add_hook(
      [&] { return broken ? std::string("NCCL asynchronous error: remote process exited") : ""; },
      [] {});
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(fired.count(), 0u);
  broken = true;
  for (int i = 0; i < 100 && fired.count() == 0; ++i)
    std::this_thread::sleep_for(10ms);
  watchdog.remove_hook(id);
  ASSERT_EQ(fired.count(), 1u);
  EXPECT_NE(fired.messages[0].find("remote process exited"), std::string::npos);
}

TEST(Watchdog, TimeoutFromEnvironment) {
  ::unsetenv("DIFFTRAIN_WATCHDOG_TIMEOUT");
  EXPECT_EQ(watchdog_timeout_from_env(5000ms), 5000ms);
  ::setenv("DIFFTRAIN_WATCHDOG_TIMEOUT", "1.5", 1);
  EXPECT_EQ(watchdog_timeout_from_env(5000ms), 1500ms);
  ::setenv("DIFFTRAIN_WATCHDOG_TIMEOUT", "soon", 1);
  EXPECT_THROW(watchdog_timeout_from_env(5000ms), std::runtime_error);
  ::unsetenv("DIFFTRAIN_WATCHDOG_TIMEOUT");
}

TEST(LocalCommunicator, CollectivesAreIdentities) {
  auto comm = make_local_communicator();
  at::Tensor t = torch::arange(6, torch::kFloat);
  comm->all_reduce(t, ReduceOp::avg);
  EXPECT_TRUE(t.equal(torch::arange(6, torch::kFloat)));
  EXPECT_TRUE(comm->all_reduce_async(t, ReduceOp::sum)->test());
  EXPECT_EQ(comm->all_gather(torch::tensor(3.0)).sizes(), at::IntArrayRef({1}));
}

GradReducerOptions small_buckets() {
  GradReducerOptions options;
  options.bucket_bytes = 64 << 10;
  options.first_bucket_bytes = 16 << 10;
  return options;
}

TEST(GradReducer, BucketsFollowReverseRegistrationOrderAndRespectSizes) {
  SmallNet net = testing::make_net();
  auto comm = make_local_communicator();
  const auto params = net->parameters();
  GradReducer reducer(params, *comm, small_buckets());
  ASSERT_EQ(reducer.num_parameters(), params.size());
  ASSERT_GE(reducer.num_buckets(), 4u);
  std::size_t expected = params.size();
  for (std::size_t b = 0; b < reducer.num_buckets(); ++b) {
    const auto members = reducer.bucket_parameters(b);
    for (const std::size_t i : members)
      EXPECT_EQ(i, --expected);  // descending, contiguous
    const std::size_t cap = b == 0 ? 16u << 10 : 64u << 10;
    if (members.size() > 1) {
      EXPECT_LE(reducer.bucket_bytes(b), cap) << "bucket " << b;
    }
  }
  EXPECT_EQ(expected, 0u);
}

TEST(GradReducer, GradientsAreViewsAccumulatedInPlace) {
  SmallNet net = testing::make_net();
  auto comm = make_local_communicator();
  const auto params = net->parameters();
  // Reference gradients without the reducer.
  testing::loss_of(net, testing::batch(0)).backward();
  std::vector<at::Tensor> expected;
  for (const auto& p : params) {
    expected.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    p.mutable_grad().reset();
  }

  GradReducerOptions options = small_buckets();
  options.rebuild_buckets = false;  // keep the buffers of construction
  GradReducer reducer(params, *comm, options);
  std::vector<const void*> storage;
  for (const auto& p : params) {
    ASSERT_TRUE(p.grad().defined());
    EXPECT_TRUE(p.grad().is_contiguous());
    EXPECT_EQ(p.grad().strides(), p.strides());
    storage.push_back(p.grad().data_ptr());
  }
  testing::loss_of(net, testing::batch(0)).backward();
  reducer.finish();
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(params[i].grad().data_ptr(), storage[i]) << "autograd replaced gradient " << i;
    EXPECT_TRUE(params[i].grad().allclose(expected[i], 1e-5, 1e-7)) << "parameter " << i;
  }
}

// Channels-last weights (model.channels_last) get channels-last bucket views: the gradient obeys
// its parameter's layout, as autograd's own would, and holds the same values.
TEST(GradReducer, BucketViewsKeepEachParameterLayout) {
  SmallNet net = testing::make_net();
  net->conv1->weight.set_data(net->conv1->weight.contiguous(at::MemoryFormat::ChannelsLast));
  net->conv2->weight.set_data(net->conv2->weight.contiguous(at::MemoryFormat::ChannelsLast));
  auto comm = make_local_communicator();
  const auto params = net->parameters();
  const auto x = testing::batch(0).contiguous(at::MemoryFormat::ChannelsLast);
  testing::loss_of(net, x).backward();
  std::vector<at::Tensor> expected;
  for (const auto& p : params) {
    expected.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    p.mutable_grad().reset();
  }

  GradReducer reducer(params, *comm, small_buckets());
  for (int step = 0; step < 2; ++step) {  // the buckets of construction, then the rebuilt ones
    reducer.zero_grad();
    testing::loss_of(net, x).backward();
    reducer.finish();
    for (std::size_t i = 0; i < params.size(); ++i) {
      EXPECT_EQ(params[i].grad().strides(), params[i].strides()) << "parameter " << i;
      EXPECT_TRUE(params[i].grad().allclose(expected[i], 1e-5, 1e-7)) << "parameter " << i;
    }
  }
  EXPECT_TRUE(params[0].grad().is_contiguous(at::MemoryFormat::ChannelsLast));
}

// One GPU per local rank; the config's device request; more ranks than GPUs is an error naming
// both numbers, never a wrap-around onto GPU 0.
TEST(RankDevice, MapsLocalRanksToVisibleGpus) {
  const auto on = [](const std::string& request, int rank, int ranks, int gpus) {
    return device_for_rank(parse_device_request(request), rank, ranks, gpus);
  };
  EXPECT_EQ(on("auto", 0, 1, 0), c10::Device(c10::kCPU));
  EXPECT_EQ(on("cpu", 3, 8, 8), c10::Device(c10::kCPU));
  for (int gpus : {1, 2, 8})
    for (int r = 0; r < gpus; ++r) {
      EXPECT_EQ(on("auto", r, gpus, gpus), c10::Device(c10::kCUDA, r));
      EXPECT_EQ(on("cuda", r, gpus, gpus), c10::Device(c10::kCUDA, r));
    }
  EXPECT_EQ(on("auto", 1, 2, 8), c10::Device(c10::kCUDA, 1));    // fewer ranks than GPUs: fine
  EXPECT_EQ(on("cuda:1", 0, 4, 2), c10::Device(c10::kCUDA, 1));  // shared on purpose
  const auto error = [&](const std::string& request, int rank, int ranks, int gpus) {
    try {
      on(request, rank, ranks, gpus);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error("auto", 2, 4, 2).find("4 ranks on this node but 2 visible GPU(s)"),
            std::string::npos)
      << error("auto", 2, 4, 2);
  EXPECT_NE(error("cuda", 0, 1, 0).find("no visible GPU"), std::string::npos);
  EXPECT_NE(error("cuda:2", 0, 1, 2).find("2 visible GPU(s)"), std::string::npos);
  EXPECT_NE(error("gpu", 0, 1, 1).find("valid: auto, cpu, cuda, cuda:N"), std::string::npos);
  EXPECT_NE(error("cuda:x", 0, 1, 1).find("valid"), std::string::npos);
  EXPECT_NE(error("cuda:", 0, 1, 1).find("valid"), std::string::npos);
  for (const char* text : {"auto", "cpu", "cuda", "cuda:3"})
    EXPECT_EQ(to_string(parse_device_request(text)), text);
  EXPECT_NE(error("auto", 1, 2, 1).find("bind a GPU to each rank (Slurm's --gpus-per-task=1"),
            std::string::npos)
      << error("auto", 1, 2, 1);
}

// A launcher that binds GPUs to ranks (Slurm's --gpus-per-task, a CUDA_VISIBLE_DEVICES per rank,
// device cgroups) gives each rank GPUs no other rank sees, numbered from 0: every rank takes its
// cuda:0, however many ranks share the node. GPUs that two ranks see are not bound, whatever their
// numbering.
TEST(RankDevice, GpusBoundToRanksGiveEachRankItsFirstGpu) {
  using Uuids = std::vector<std::vector<std::string>>;
  EXPECT_TRUE(gpus_bound_per_rank(Uuids{{"a"}, {"b"}}));
  EXPECT_TRUE(gpus_bound_per_rank(Uuids{{"a", "b"}, {"c", "d"}, {"e", "f"}}));
  EXPECT_FALSE(gpus_bound_per_rank(Uuids{{"a"}, {"a"}}));            // one GPU, visible to both
  EXPECT_FALSE(gpus_bound_per_rank(Uuids{{"a", "b"}, {"a", "b"}}));  // the usual: all visible
  EXPECT_FALSE(gpus_bound_per_rank(Uuids{{"a", "b"}, {"b", "c"}}));  // overlapping
  EXPECT_FALSE(gpus_bound_per_rank(Uuids{{"a"}, {}}));               // a rank without a GPU
  EXPECT_FALSE(gpus_bound_per_rank(Uuids{{"a", "b"}}));              // one rank
  EXPECT_FALSE(gpus_bound_per_rank(Uuids{{}, {}}));                  // CPU-only nodes
  const auto on = [](const std::string& request, int rank, int ranks, int gpus) {
    return device_for_rank(parse_device_request(request), rank, ranks, gpus, true);
  };
  for (int rank = 0; rank < 8; ++rank) {
    EXPECT_EQ(on("auto", rank, 8, 1), c10::Device(c10::kCUDA, 0));
    EXPECT_EQ(on("cuda", rank, 8, 1), c10::Device(c10::kCUDA, 0));
  }
  EXPECT_EQ(on("auto", 1, 2, 2), c10::Device(c10::kCUDA, 0));    // its own two: the first
  EXPECT_EQ(on("cuda:1", 1, 2, 2), c10::Device(c10::kCUDA, 1));  // asked for by number
  EXPECT_EQ(on("cpu", 1, 2, 1), c10::Device(c10::kCPU));
}

// The embedding, registered last and unused, lands in bucket 0 at first and holds back every
// launch until finish(); from the second step on the buckets follow the observed order.
TEST(GradReducer, RebuildsBucketsInHookOrderThenLaunchesDuringBackward) {
  SmallNet net = testing::make_net();
  auto comm = make_local_communicator();
  GradReducer reducer(net->parameters(), *comm, small_buckets());
  const std::size_t embedding = net->parameters().size() - 1;
  EXPECT_EQ(reducer.bucket_parameters(0).front(), embedding);
  for (int step = 0; step < 2; ++step) {
    reducer.zero_grad();
    testing::loss_of(net, testing::batch(0, step)).backward();
    reducer.finish();
  }
  const auto last = reducer.bucket_parameters(reducer.num_buckets() - 1);
  EXPECT_EQ(last.back(), embedding);
  const auto& trace = reducer.trace();
  std::size_t first_launch = trace.size(), last_ready = 0, next_bucket = 0;
  for (std::size_t e = 0; e < trace.size(); ++e) {
    if (trace[e].kind == ReducerEvent::Kind::launch) {
      first_launch = std::min(first_launch, e);
      EXPECT_EQ(trace[e].index, next_bucket++);
    }
    if (trace[e].kind == ReducerEvent::Kind::grad_ready) last_ready = e;
  }
  EXPECT_EQ(next_bucket, reducer.num_buckets());
  EXPECT_LT(first_launch, last_ready) << "no bucket was launched before backward ended";
}

TEST(GradReducer, AccumulationCommunicatesOnlyOnTheLastMicrobatch) {
  SmallNet net = testing::make_net();
  auto local = make_local_communicator();
  testing::CountingCommunicator comm(*local);
  const auto params = net->parameters();
  testing::loss_of(net, testing::batch(0, 0)).backward();
  testing::loss_of(net, testing::batch(0, 1)).backward();
  std::vector<at::Tensor> expected;
  for (const auto& p : params) {
    expected.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  }

  GradReducerOptions options = small_buckets();
  options.rebuild_buckets = false;  // the broadcast of the rebuild is not an all-reduce
  GradReducer reducer(params, comm, options);
  reducer.zero_grad();
  reducer.set_sync(false);
  testing::loss_of(net, testing::batch(0, 0)).backward();
  reducer.finish();  // a no-op while not synchronising
  EXPECT_EQ(comm.all_reduces, 0);
  reducer.set_sync(true);
  testing::loss_of(net, testing::batch(0, 1)).backward();
  reducer.finish();
  EXPECT_EQ(comm.all_reduces, static_cast<int>(reducer.num_buckets()));
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(params[i].grad().allclose(expected[i], 1e-5, 1e-7)) << "parameter " << i;
  }
}

TEST(GradReducer, UnusedParameterAndResetGradientsAreHandled) {
  SmallNet net = testing::make_net();
  auto comm = make_local_communicator();
  GradReducer reducer(net->parameters(), *comm, small_buckets());
  for (int step = 0; step < 2; ++step) {
    // Step 1 resets gradients the way optimizer.zero_grad() does (set to none).
    if (step == 1) {
      for (auto& p : net->parameters())
        p.mutable_grad().reset();
    } else {
      reducer.zero_grad();
    }
    testing::loss_of(net, testing::batch(0)).backward();  // the embedding gets no gradient
    reducer.finish();
    const at::Tensor grad = net->embedding->weight.grad();
    ASSERT_TRUE(grad.defined());
    EXPECT_EQ(grad.abs().sum().item<float>(), 0.0f);
    EXPECT_GT(net->fc1->weight.grad().abs().sum().item<float>(), 0.0f);
  }
}

TEST(GradReducer, SecondReducerAfterTheFirstIsDestroyed) {
  SmallNet net = testing::make_net();
  auto comm = make_local_communicator();
  { GradReducer first(net->parameters(), *comm); }
  GradReducer second(net->parameters(), *comm);
  EXPECT_THROW(GradReducer(net->parameters(), *comm), std::invalid_argument);
}

TEST(Nccl, BackendIsBuiltAndLinked) {
  const CommRuntimeInfo info = comm_runtime_info();
  const std::string why_not = nccl_unavailable_reason();
  if (info.nccl_built) {
    EXPECT_FALSE(info.nccl_version.empty());
  }
  if (!why_not.empty()) {
    GTEST_SKIP() << "NCCL backend not runnable here: " << why_not
                 << (info.nccl_built ? " (built with NCCL " + info.nccl_version + ")" : "");
  }
  // A GPU machine: a world of one rank over NCCL, the same collectives as on CPU.
  World world;
  auto comm = make_nccl_communicator(world, c10::Device(c10::kCUDA, 0));
  at::Tensor t = torch::full({1000}, 2.0f, torch::kCUDA);
  comm->all_reduce(t, ReduceOp::avg);
  EXPECT_EQ(t.sum().item<float>(), 2000.0f);
  EXPECT_EQ(comm->all_gather(t).size(0), 1000);
  comm->barrier();
}

}  // namespace
}  // namespace difftrain::parallel
