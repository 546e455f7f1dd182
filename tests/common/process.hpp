// Runs a command as a user would, capturing its exit code and its combined stdout + stderr.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace difftrain::testing {

struct ProcessResult {
  int exit_code;  // -1 when killed by a signal
  std::string output;
};

inline ProcessResult run_command(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "popen failed: " + command};
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, pipe))
    out += buf;
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace difftrain::testing
