#include "parallel/rank_device.hpp"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include <charconv>
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

DeviceRequest parse_device_request(std::string_view text) {
  using Kind = DeviceRequest::Kind;
  if (text == "auto") return {Kind::automatic, -1};
  if (text == "cpu") return {Kind::cpu, -1};
  if (text == "cuda") return {Kind::cuda, -1};
  if (text.substr(0, 5) == "cuda:") {
    const std::string_view digits = text.substr(5);
    int index = -1;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (!digits.empty() && error == std::errc() && end == digits.data() + digits.size() &&
        index >= 0)
      return {Kind::cuda, index};
  }
  throw std::invalid_argument("unknown device '" + std::string(text) +
                              "' (valid: auto, cpu, cuda, cuda:N)");
}

std::string to_string(const DeviceRequest& request) {
  switch (request.kind) {
    case DeviceRequest::Kind::automatic:
      return "auto";
    case DeviceRequest::Kind::cpu:
      return "cpu";
    case DeviceRequest::Kind::cuda:
      return request.index < 0 ? "cuda" : "cuda:" + std::to_string(request.index);
  }
  return "?";
}

c10::Device device_for_rank(const DeviceRequest& request, int local_rank, int local_ranks,
                            int visible_gpus) {
  using Kind = DeviceRequest::Kind;
  if (request.kind == Kind::cpu) return c10::kCPU;
  if (request.index >= 0) {
    if (request.index >= visible_gpus)
      throw std::invalid_argument("device '" + to_string(request) + "' but this node has " +
                                  std::to_string(visible_gpus) + " visible GPU(s)" +
                                  visible_devices_note());
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(request.index));
  }
  if (visible_gpus == 0) {
    if (request.kind == Kind::cuda)
      throw std::invalid_argument("device 'cuda' but this node has no visible GPU" +
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

c10::Device rank_device(const World& world, const DeviceRequest& request) {
  // Asking the CUDA runtime costs a context probe: skip it when the CPU is asked for.
  const int gpus =
      request.kind == DeviceRequest::Kind::cpu ? 0 : static_cast<int>(torch::cuda::device_count());
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
