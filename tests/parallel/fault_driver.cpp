// Runs a few training-like steps of collectives under a watchdog and misbehaves on purpose, for
// the failure tests (run under mpirun, judged by expect_failure.cmake):
//   fault_driver hang <timeout_s>          rank 1 sleeps before the all-reduce of step 3
//   fault_driver hang-reducer <timeout_s>  rank 1 sleeps before the backward of step 3
//   fault_driver kill <timeout_s>          rank 1 SIGKILLs itself at step 3
//   fault_driver ok <timeout_s>            no fault: exits 0
#include <torch/torch.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

#include "parallel/communicator.hpp"
#include "parallel/grad_reducer.hpp"
#include "parallel/watchdog.hpp"
#include "parallel/world.hpp"
#include "test_models.hpp"

using namespace difftrain::parallel;

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: fault_driver hang|hang-reducer|kill|ok TIMEOUT_S\n");
    return 2;
  }
  const std::string mode = argv[1];
  const auto timeout = std::chrono::milliseconds(static_cast<long>(std::stod(argv[2]) * 1000));
  at::set_num_threads(1);
  World world;
  Watchdog watchdog(timeout);
  auto comm = make_mpi_communicator(world, &watchdog);
  auto net = testing::make_net();
  GradReducerOptions options;
  options.bucket_bytes = 64 << 10;
  options.first_bucket_bytes = 16 << 10;
  options.watchdog = &watchdog;
  GradReducer reducer(net->parameters(), *comm, options);
  const bool faulty = world.rank() == 1;
  for (int step = 0; step < 6; ++step) {
    watchdog.set_step(step);
    if (faulty && step == 3) {
      if (mode == "hang-reducer") std::this_thread::sleep_for(std::chrono::hours(1));
      if (mode == "kill") std::raise(SIGKILL);
    }
    reducer.zero_grad();
    testing::loss_of(net, testing::batch(world.rank(), step)).backward();
    reducer.finish();
    if (faulty && step == 3 && mode == "hang") std::this_thread::sleep_for(std::chrono::hours(1));
    at::Tensor loss = torch::full({1}, 1.0);
    comm->all_reduce(loss, ReduceOp::sum);
  }
  if (world.rank() == 0) std::printf("fault_driver: %s finished\n", mode.c_str());
  return 0;
}
