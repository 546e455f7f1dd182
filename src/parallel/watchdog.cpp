#include "parallel/watchdog.hpp"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "parallel/world.hpp"

namespace difftrain::parallel {
namespace {

std::string seconds(std::chrono::duration<double> d) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f s", d.count());
  return text;
}

}  // namespace

Watchdog::Watchdog(std::chrono::milliseconds timeout, Action action)
    : timeout_(timeout), action_(std::move(action)), thread_([this] { run(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Watchdog::set_step(std::int64_t step) {
  std::lock_guard lock(mutex_);
  step_ = step;
}

Watchdog::Ticket Watchdog::enter(std::string what, std::function<bool()> done) {
  std::lock_guard lock(mutex_);
  const Ticket ticket = next_ticket_++;
  entries_.emplace(ticket, Entry{std::move(what), step_, Clock::now(), std::move(done)});
  return ticket;
}

void Watchdog::leave(Ticket ticket) {
  std::lock_guard lock(mutex_);
  entries_.erase(ticket);
}

int Watchdog::add_hook(std::function<std::string()> check, std::function<void()> on_abort) {
  std::lock_guard lock(mutex_);
  const int id = next_hook_++;
  hooks_.emplace(id, Hook{std::move(check), std::move(on_abort)});
  return id;
}

void Watchdog::remove_hook(int id) {
  std::lock_guard lock(mutex_);
  hooks_.erase(id);
}

void Watchdog::run() {
  // Poll often enough that the abort comes within ~10% of the timeout, but at most every 100 ms.
  const auto poll =
      std::clamp(timeout_ / 10, std::chrono::milliseconds(1), std::chrono::milliseconds(100));
  std::unique_lock lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, poll, [this] { return stop_; });
    if (stop_ || fired_) continue;
    std::string message;
    for (auto& [id, hook] : hooks_) {
      if (hook.check) message = hook.check();
      if (!message.empty()) break;
    }
    const auto now = Clock::now();
    for (auto it = entries_.begin(); message.empty() && it != entries_.end();) {
      Entry& entry = it->second;
      if (entry.done && entry.done()) {
        it = entries_.erase(it);
        continue;
      }
      if (now - entry.start > timeout_) {
        message = "watchdog: " + entry.what +
                  (entry.step >= 0 ? " at step " + std::to_string(entry.step) : "") +
                  " has not completed after " + seconds(now - entry.start) + " (timeout " +
                  seconds(timeout_) + ")";
        if (entries_.size() > 1) {
          message += "; also open:";
          for (const auto& [other_ticket, other] : entries_) {
            if (&other != &entry) message += " '" + other.what + "'";
          }
        }
      }
      ++it;
    }
    if (message.empty()) continue;
    fired_ = true;
    lock.unlock();
    fire(message);
    lock.lock();
  }
}

void Watchdog::fire(const std::string& message) {
  if (action_) {
    action_(message);
    return;
  }
  std::vector<std::function<void()>> aborts;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, hook] : hooks_) {
      if (hook.on_abort) aborts.push_back(hook.on_abort);
    }
  }
  if (!aborts.empty()) {  // say why first: an abort hook may itself take a while
    std::fprintf(stderr, "%s; aborting the communicators\n", message.c_str());
    std::fflush(stderr);
  }
  for (auto& abort : aborts)
    abort();
  abort_world(message + "; aborted");
}

}  // namespace difftrain::parallel
