// MPI error codes to exceptions, for the files of src/parallel that call MPI (not for the trainer:
// this header includes mpi.h).
#pragma once

#include <mpi.h>

#include <string_view>

namespace difftrain::parallel {

// Throws std::runtime_error "MPI <what> failed: <MPI error string>" unless rc is MPI_SUCCESS.
// The world communicator returns errors (MPI_ERRORS_RETURN) instead of aborting, so a failed call
// becomes an exception naming the collective.
void mpi_check(int rc, std::string_view what);

}  // namespace difftrain::parallel
