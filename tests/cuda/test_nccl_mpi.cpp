// The gradient reducer over NCCL, run under mpirun with 1 and 2 ranks (the GPU check puts both
// ranks on its one GPU, each with its own NCCL_HOSTID: tests/cuda/per_rank_hostid.sh). Each test is
// skipped, saying why, where NCCL cannot run (no GPU, or a build without the NCCL backend).
// tests/parallel/test_parallel_mpi.cpp runs the same reducer tests over MPI on CPU tensors, and its
// Collectives/CUDA cases cover the NCCL collectives themselves.
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>

#include "mpi_gtest_main.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_reducer.hpp"
#include "parallel/rank_device.hpp"
#include "parallel/watchdog.hpp"
#include "parallel/world.hpp"
#include "test_models.hpp"

namespace difftrain::parallel {
namespace {

using testing::SmallNet;

class NcclReducer : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why_not = nccl_unavailable_reason(); !why_not.empty())
      GTEST_SKIP() << "NCCL skipped: " << why_not;
    // More ranks than GPUs (the GPU check's 2 ranks on one GPU) share GPU 0 on purpose.
    const bool share = g_world->local_size() > static_cast<int>(torch::cuda::device_count());
    device_ = rank_device(*g_world, parse_device_request(share ? "cuda:0" : "auto"));
    comm_ = make_nccl_communicator(*g_world, device_, g_watchdog);
  }

  // The same model on every rank, on this rank's GPU.
  SmallNet make_net(bool channels_last) const {
    SmallNet net = testing::make_net();
    net->to(device_);
    if (channels_last)  // as model.channels_last does to the UNet's convolutions
      for (auto* conv : {&net->conv1, &net->conv2})
        (*conv)->weight.set_data((*conv)->weight.contiguous(at::MemoryFormat::ChannelsLast));
    return net;
  }
  at::Tensor batch(int microbatch = 0) const {
    return testing::batch(comm_->rank(), microbatch).to(device_);
  }

  // Each rank's own gradients, averaged by one plain all-reduce per parameter.
  std::vector<at::Tensor> reference(SmallNet& net, bool use_embedding) {
    std::vector<at::Tensor> grads;
    for (auto& p : net->parameters())
      p.mutable_grad().reset();
    testing::loss_of(net, batch(), use_embedding).backward();
    for (auto& p : net->parameters()) {
      at::Tensor g = p.grad().defined() ? p.grad().clone().contiguous() : torch::zeros_like(p);
      comm_->all_reduce(g, ReduceOp::avg);
      grads.push_back(g);
      p.mutable_grad().reset();
    }
    return grads;
  }

  GradReducerOptions small_buckets() const {
    GradReducerOptions options;
    options.bucket_bytes = 64 << 10;
    options.first_bucket_bytes = 16 << 10;
    options.watchdog = g_watchdog;
    return options;
  }

  // Per parameter: max |reduced - reference| <= atol + rtol * max |reference|.
  static void expect_grads(SmallNet& net, const std::vector<at::Tensor>& ref, double rtol,
                           double atol) {
    const auto params = net->parameters();
    for (std::size_t i = 0; i < params.size(); ++i) {
      const double diff = (params[i].grad() - ref[i]).abs().max().item<double>();
      const double scale = ref[i].abs().max().item<double>();
      EXPECT_LE(diff, atol + rtol * scale) << "parameter " << i;
    }
  }

  c10::Device device_{c10::kCPU};
  std::unique_ptr<Communicator> comm_;
};

TEST_F(NcclReducer, TheRankDeviceIsCurrent) {
  EXPECT_TRUE(device_.is_cuda());
  EXPECT_EQ(c10::impl::getDeviceGuardImpl(c10::kCUDA)->getDevice(), device_);
}

// fp32 buckets: the average of every rank's gradients, as a plain all-reduce computes it, for
// channels-first and channels-last weights (bucket views keep each parameter's strides).
TEST_F(NcclReducer, MatchesPlainAllReduce) {
  for (const bool channels_last : {false, true}) {
    SCOPED_TRACE(channels_last ? "channels-last" : "channels-first");
    SmallNet net = make_net(channels_last);
    const auto ref = reference(net, true);
    GradReducer reducer(net->parameters(), *comm_, small_buckets());
    ASSERT_GE(reducer.num_buckets(), 4u);
    for (int step = 0; step < 3; ++step) {
      g_watchdog->set_step(step);
      reducer.zero_grad();
      testing::loss_of(net, batch(), true).backward();
      reducer.finish();
      expect_grads(net, ref, 1e-5, 1e-8);
    }
    for (const auto& p : net->parameters())
      EXPECT_EQ(p.grad().strides(), p.strides()) << "gradient layout differs from its parameter's";
  }
}

TEST_F(NcclReducer, AccumulatesMicrobatchesAndSkipsUnusedParameters) {
  SmallNet net = make_net(false);
  // The embedding is used on odd ranks only: ranks produce different sets of gradients.
  const bool use = comm_->rank() % 2 == 1;
  std::vector<at::Tensor> ref;
  {
    for (auto& p : net->parameters())
      p.mutable_grad().reset();
    for (int m = 0; m < 3; ++m)
      testing::loss_of(net, batch(m), use).backward();
    for (auto& p : net->parameters()) {
      at::Tensor g = p.grad().defined() ? p.grad().clone() : torch::zeros_like(p);
      comm_->all_reduce(g, ReduceOp::avg);
      ref.push_back(g);
      p.mutable_grad().reset();
    }
  }
  GradReducer reducer(net->parameters(), *comm_, small_buckets());
  reducer.zero_grad();
  for (int m = 0; m < 3; ++m) {
    reducer.set_sync(m == 2);
    testing::loss_of(net, batch(m), use).backward();
    reducer.finish();
  }
  expect_grads(net, ref, 1e-5, 1e-8);
}

// Buckets travel in bfloat16 / float16: close to the fp32 average (the CPU test's tolerances).
TEST_F(NcclReducer, ReducedPrecisionWireIsCloseToFloat32) {
  SmallNet net = make_net(false);
  const auto ref = reference(net, false);
  for (const auto wire : {at::kBFloat16, at::kHalf}) {
    SCOPED_TRACE(c10::toString(wire));
    GradReducerOptions options = small_buckets();
    options.wire_dtype = wire;
    GradReducer reducer(net->parameters(), *comm_, options);
    reducer.zero_grad();
    testing::loss_of(net, batch()).backward();
    reducer.finish();
    // bfloat16 keeps 8 significant bits; one rounding per reduction step.
    expect_grads(net, ref, wire == at::kBFloat16 ? 2e-2 : 4e-3, 1e-6);
  }
}

}  // namespace
}  // namespace difftrain::parallel
