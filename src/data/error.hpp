// The one exception type of the data layer: a one-line message that names the file at fault.
#pragma once

#include <stdexcept>

namespace difftrain::data {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace difftrain::data
