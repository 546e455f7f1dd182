#include "parallel/mpi_check.hpp"

#include <stdexcept>
#include <string>

namespace difftrain::parallel {

void mpi_check(int rc, std::string_view what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw std::runtime_error("MPI " + std::string(what) + " failed: " + std::string(text, len));
}

}  // namespace difftrain::parallel
