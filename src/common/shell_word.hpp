// A string as one word of a POSIX shell command line, for the commands difftrain prints for the
// user to copy: quoted unless it is plain.
#pragma once

#include <string>

namespace difftrain {

inline std::string shell_word(const std::string& s) {
  const bool plain = !s.empty() && s.find_first_not_of(
                                       "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP"
                                       "QRSTUVWXYZ0123456789_./-+=,:") == std::string::npos;
  if (plain) return s;
  std::string q = "'";
  for (char c : s)
    q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace difftrain
