#include "parallel/rank_device.hpp"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include <cstdlib>
#include <stdexcept>

#include "parallel/world.hpp"

namespace difftrain::parallel {
namespace {

std::string visible_devices_note() {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  return visible ? std::string(" (CUDA_VISIBLE_DEVICES=") + visible + ")" : std::string();
}

}  // namespace

c10::Device device_for_rank(const std::string& request, int local_rank, int local_ranks,
                            int visible_gpus) {
  if (request == "cpu") return c10::kCPU;
  if (request.rfind("cuda:", 0) == 0) {
    const std::string index = request.substr(5);
    char* end = nullptr;
    const long n = std::strtol(index.c_str(), &end, 10);
    if (index.empty() || *end != '\0' || n < 0)
      throw std::invalid_argument("config key 'device' = '" + request +
                                  "': valid values are auto, cpu, cuda and cuda:N");
    if (n >= visible_gpus)
      throw std::invalid_argument("config key 'device' = '" + request + "' but this node has " +
                                  std::to_string(visible_gpus) + " visible GPU(s)" +
                                  visible_devices_note());
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(n));
  }
  if (request != "auto" && request != "cuda")
    throw std::invalid_argument("config key 'device' = '" + request +
                                "': valid values are auto, cpu, cuda and cuda:N");
  if (visible_gpus == 0) {
    if (request == "cuda")
      throw std::invalid_argument("config key 'device' = 'cuda' but this node has no visible GPU" +
                                  visible_devices_note());
    return c10::kCPU;
  }
  if (local_ranks > visible_gpus)
    throw std::invalid_argument(
        std::to_string(local_ranks) + " ranks on this node but " + std::to_string(visible_gpus) +
        " visible GPU(s)" + visible_devices_note() +
        ": start at most one rank per GPU, or set device: cuda:N to share GPU N on purpose");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

c10::Device rank_device(const World& world, const std::string& request) {
  // Asking the CUDA runtime costs a context probe: skip it when the CPU is asked for.
  const int gpus = request == "cpu" ? 0 : static_cast<int>(torch::cuda::device_count());
  c10::Device device = c10::kCPU;
  try {
    device = device_for_rank(request, world.local_rank(), world.local_size(), gpus);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("node " + world.hostname() + ": " + e.what());
  }
  // The current device too: whatever allocates on "the current GPU" (CUDA contexts, library
  // workspaces) must not land on GPU 0 from every rank.
  if (device.is_cuda()) c10::impl::getDeviceGuardImpl(c10::kCUDA)->setDevice(device);
  return device;
}

}  // namespace difftrain::parallel
