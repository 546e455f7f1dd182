#include "train/stop_rule.hpp"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>

#include "parallel/communicator.hpp"
#include "train/config.hpp"

namespace difftrain::train {
namespace {

// Set by the handler; the one piece of process-wide state here: a signal handler can reach
// nothing else.
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
}

}  // namespace

struct StopSignalGuard::Saved {
  struct sigaction term {
  }, interrupt{};
};

StopSignalGuard::StopSignalGuard() : saved_(std::make_unique<Saved>()) {
  g_stop_signal.store(0);
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &saved_->term);
  sigaction(SIGINT, &sa, &saved_->interrupt);
}

StopSignalGuard::~StopSignalGuard() {
  sigaction(SIGTERM, &saved_->term, nullptr);
  sigaction(SIGINT, &saved_->interrupt, nullptr);
}

Stop agree_on_stop(parallel::Communicator& comm, const TrainingConfig& tc,
                   std::chrono::steady_clock::time_point start, const c10::Device& device,
                   int64_t step) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  int stop = g_stop_signal.load() != 0 ? 2 : (tc.max_time > 0 && elapsed >= tc.max_time) ? 1 : 0;
  at::Tensor flag = at::full({1}, stop, at::TensorOptions(device).dtype(at::kInt));
  comm.all_reduce(flag, parallel::ReduceOp::max);
  stop = flag.item<int>();
  if (stop != 0 && comm.rank() == 0)
    spdlog::info("{} at step {}", stop == 2 ? "stop signal received" : "training.max_time reached",
                 step);
  return stop == 2 ? Stop::signal : stop == 1 ? Stop::time_limit : Stop::no;
}

}  // namespace difftrain::train
