// The frame of every subcommand that runs on the MPI world (train, sample, eval).
#pragma once

#include <functional>

namespace difftrain::parallel {
class World;
}

namespace difftrain::cli {

// Starts the world (rank 0 logs at info, the others at warn) and runs `body` on it. An exception
// is printed by the rank that threw it, before MPI goes down (World's destructor would abort
// first and the message be lost). Alone, the process then returns kBadInput; in a job every rank
// is aborted, since the others may be waiting for this one in a collective.
int run_on_world(const std::function<int(parallel::World&)>& body);

}  // namespace difftrain::cli
