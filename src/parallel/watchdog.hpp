// A thread that ends the job when a collective takes too long, so that a rank that hangs or dies
// never leaves the others waiting forever. Collectives announce themselves (enter/leave, or the
// Scope guard); the watchdog checks the open ones every poll and, when one has been open longer
// than the timeout, calls its action with a one-line message naming the step and the collective.
// The default action prints the message, runs the abort hooks (ncclCommAbort) and MPI_Aborts, so
// every rank exits non-zero.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace difftrain::parallel {

class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;
  using Ticket = std::uint64_t;
  // Receives the message; the default is abort_world after running the abort hooks.
  using Action = std::function<void(const std::string& message)>;

  explicit Watchdog(std::chrono::milliseconds timeout, Action action = {});
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  std::chrono::milliseconds timeout() const { return timeout_; }
  // The training step that later enter() calls are attributed to.
  void set_step(std::int64_t step);

  // Opens an entry named `what` (e.g. "all_reduce of gradient bucket 3 of 7"). An entry closes on
  // leave(), or, when `done` is given, as soon as the watchdog thread sees done() return true
  // (NCCL: cudaEventQuery on the collective's end event; done must then be thread-safe).
  Ticket enter(std::string what, std::function<bool()> done = {});
  void leave(Ticket ticket);

  // Extra per-poll checks and abort steps for a backend: `check` returns a non-empty message for
  // a fatal asynchronous error (NCCL: ncclCommGetAsyncError), which triggers the action like a
  // timeout; `on_abort` runs before the default action ends the job. Returns an id for remove_hook.
  int add_hook(std::function<std::string()> check, std::function<void()> on_abort);
  void remove_hook(int id);

  // enter() on construction, leave() on destruction.
  class Scope {
   public:
    Scope(Watchdog* watchdog, std::string what)
        : watchdog_(watchdog), ticket_(watchdog ? watchdog->enter(std::move(what)) : 0) {}
    ~Scope() {
      if (watchdog_) watchdog_->leave(ticket_);
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Watchdog* watchdog_;
    Ticket ticket_;
  };

 private:
  struct Entry {
    std::string what;
    std::int64_t step;
    Clock::time_point start;
    std::function<bool()> done;
  };
  struct Hook {
    std::function<std::string()> check;
    std::function<void()> on_abort;
  };

  void run();
  void fire(const std::string& message);  // called with mutex_ not held

  const std::chrono::milliseconds timeout_;
  Action action_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool fired_ = false;
  std::int64_t step_ = -1;
  Ticket next_ticket_ = 1;
  int next_hook_ = 1;
  std::map<Ticket, Entry> entries_;  // ordered by ticket: oldest first
  std::map<int, Hook> hooks_;
  std::thread thread_;  // last: starts after every other member is ready
};

}  // namespace difftrain::parallel
