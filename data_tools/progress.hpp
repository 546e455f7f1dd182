// Progress of a long conversion on stderr: a bar redrawn in place (carriage return) on a
// terminal, a plain line every 10% otherwise (logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace difftrain::h5shard {

class Progress {
 public:
  Progress(std::string label, int64_t total);
  void update(int64_t done);
  void finish();  // the final state and a newline

 private:
  void draw(int64_t done, bool final);
  std::string label_;
  int64_t total_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  int64_t last_decile_ = -1;
  bool finished_ = false;
};

}  // namespace difftrain::h5shard
