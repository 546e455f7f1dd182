// Measures, on the ranks it runs on: raw MPI all-reduce of one flat float32 buffer, the same bytes
// through the gradient reducer (finish() right after the gradients are set, so no overlap), and a
// backward pass with the reducer overlapping it against backward followed by a blocking reduce.
//   mpirun -np 2 bandwidth [MB] [repeats]
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

#include "dist/communicator.hpp"
#include "dist/grad_reducer.hpp"
#include "dist/world.hpp"

using namespace difftrain::dist;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A stack of Linear(1024, 1024) layers: 4 MB of float32 gradients each.
torch::nn::Sequential make_mlp(int layers) {
  torch::manual_seed(0);
  torch::nn::Sequential mlp;
  for (int i = 0; i < layers; ++i)
    mlp->push_back(torch::nn::Linear(1024, 1024));
  return mlp;
}

}  // namespace

int main(int argc, char** argv) {
  const double mb = argc > 1 ? std::atof(argv[1]) : 50;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 5;
  at::set_num_threads(1);
  World world;
  auto comm = make_mpi_communicator(world);
  const int w = world.size();
  const double bus = 2.0 * (w - 1) / w;  // ring all-reduce moves 2(W-1)/W of the bytes per rank
  auto report = [&](const char* what, double bytes, double t) {
    if (world.rank() == 0) {
      std::printf("%-44s %8.1f MB  %8.1f ms  algbw %7.2f GB/s  busbw %7.2f GB/s\n", what,
                  bytes / 1e6, t * 1e3, bytes / t / 1e9, bus * bytes / t / 1e9);
    }
  };

  const auto n = static_cast<int64_t>(mb * 1e6 / 4);
  at::Tensor flat = torch::ones({n});
  comm->all_reduce(flat, ReduceOp::avg);  // warm up
  double best = 1e9;
  for (int r = 0; r < repeats; ++r) {
    comm->barrier();
    const auto start = Clock::now();
    comm->all_reduce(flat, ReduceOp::avg);
    best = std::min(best, seconds_since(start));
  }
  report("MPI_Allreduce, one flat buffer", n * 4.0, best);

  const int layers = std::max(1, static_cast<int>(mb / 4.2));
  auto mlp = make_mlp(layers);
  std::vector<at::Tensor> params = mlp->parameters();
  double bytes = 0;
  for (auto& p : params)
    bytes += p.nbytes();
  for (const bool compress : {false, true}) {
    GradReducerOptions options;
    if (compress) options.wire_dtype = at::kBFloat16;
    GradReducer reducer(params, *comm, options);
    best = 1e9;
    for (int r = 0; r <= repeats; ++r) {
      reducer.zero_grad();
      comm->barrier();
      const auto start = Clock::now();
      reducer.finish();  // no backward: every bucket is launched here, at once
      if (r > 0) best = std::min(best, seconds_since(start));
    }
    report(
        compress ? "reducer finish(), bf16 wire, 25 MB buckets" : "reducer finish(), 25 MB buckets",
        bytes, best);
  }

  // Overlap: backward with the reducer vs backward then one blocking all-reduce per bucket.
  const at::Tensor x = torch::randn({256, 1024});
  for (const bool progress : {true, false}) {
    GradReducerOptions options;
    options.bucket_bytes = 8 << 20;
    options.progress_in_hooks = progress;
    GradReducer reducer(params, *comm, options);
    double backward = 1e9, total = 1e9;
    for (int r = 0; r <= repeats; ++r) {
      reducer.zero_grad();
      comm->barrier();
      const auto start = Clock::now();
      mlp->forward(x).pow(2).mean().backward();
      const double b = seconds_since(start);
      reducer.finish();
      if (r > 0) {
        backward = std::min(backward, b);
        total = std::min(total, seconds_since(start));
      }
    }
    if (world.rank() == 0) {
      std::printf(
          "forward+backward+finish, 8 MB buckets, MPI_Test in hooks %-3s: %7.1f ms "
          "(finish waits %6.1f ms)\n",
          progress ? "on" : "off", total * 1e3, (total - backward) * 1e3);
    }
  }
  {
    double total = 1e9;
    for (int r = 0; r <= repeats; ++r) {
      for (auto& p : params)
        p.mutable_grad().reset();
      comm->barrier();
      const auto start = Clock::now();
      mlp->forward(x).pow(2).mean().backward();
      for (auto& p : params) {
        at::Tensor g = p.grad();
        comm->all_reduce(g, ReduceOp::avg);
      }
      if (r > 0) total = std::min(total, seconds_since(start));
    }
    if (world.rank() == 0) {
      std::printf("forward+backward, then blocking all_reduce per tensor:   %7.1f ms\n",
                  total * 1e3);
    }
  }
  return 0;
}
