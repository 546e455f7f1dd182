#include "progress.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>

namespace difftrain::h5shard {

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)),
      total_(total > 0 ? total : 1),
      tty_(isatty(fileno(stderr)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

void Progress::update(int64_t done) {
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (now - last_draw_ >= std::chrono::milliseconds(100)) {
      last_draw_ = now;
      draw(done, false);
    }
  } else if (const int64_t decile = done * 10 / total_; decile > last_decile_ && decile < 10) {
    last_decile_ = decile;
    if (decile > 0) draw(done, false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  draw(total_, true);
}

void Progress::draw(int64_t done, bool final) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0.0;
  const int64_t percent = done * 100 / total_;
  if (!tty_) {
    spdlog::info("{}: {}/{} ({}%), {:.0f} samples/s", label_, done, total_, percent, rate);
    return;
  }
  constexpr int kWidth = 30;
  const auto filled = static_cast<int>(done * kWidth / total_);
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
  std::fprintf(stderr, "\r%s [%s%s] %3lld%% %lld/%lld %.0f/s ETA %.0fs \033[K", label_.c_str(),
               std::string(static_cast<std::size_t>(filled), '#').c_str(),
               std::string(static_cast<std::size_t>(kWidth - filled), '.').c_str(),
               static_cast<long long>(percent), static_cast<long long>(done),
               static_cast<long long>(total_), rate, eta);
  if (final) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace difftrain::h5shard
