#include "parallel/communicator.hpp"
#include "parallel/world.hpp"

namespace difftrain::parallel {

// One process needs no library at all; CUDA tensors go through NCCL even then, so that a 1-GPU
// run exercises the same stream ordering as a multi-GPU one.
std::unique_ptr<Communicator> make_communicator(const World& world, c10::Device device,
                                                Watchdog* watchdog) {
  if (device.is_cuda()) {
    if (!device.has_index()) device = c10::Device(c10::kCUDA, 0);
    return make_nccl_communicator(world, device, watchdog);
  }
  if (world.size() == 1) return make_local_communicator();
  return make_mpi_communicator(world, watchdog);
}

}  // namespace difftrain::parallel
