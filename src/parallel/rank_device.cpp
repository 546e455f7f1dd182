#include "parallel/rank_device.hpp"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include <mpi.h>

#include <charconv>
#include <cstdlib>
#include <set>
#include <stdexcept>

#include "parallel/mpi_check.hpp"
#include "parallel/world.hpp"

#ifdef DIFFTRAIN_HAVE_NCCL  // a CUDA build of LibTorch, with the CUDA runtime
#include <cuda_runtime_api.h>
#endif

namespace difftrain::parallel {
namespace {

std::string visible_devices_note() {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  return visible ? std::string(" (CUDA_VISIBLE_DEVICES=") + visible + ")" : std::string();
}

constexpr std::size_t kUuidBytes = 16;

// The UUIDs of the GPUs this process sees, in the CUDA runtime's order: none in a build without
// CUDA. The numbering differs between ranks with their own CUDA_VISIBLE_DEVICES; the UUIDs do not.
std::vector<std::string> visible_gpu_uuids(int gpus) {
  std::vector<std::string> uuids;
#ifdef DIFFTRAIN_HAVE_NCCL
  for (int i = 0; i < gpus; ++i) {
    cudaDeviceProp prop{};
    if (const cudaError_t rc = cudaGetDeviceProperties(&prop, i); rc != cudaSuccess)
      throw std::runtime_error(std::string("CUDA GetDeviceProperties failed: ") +
                               cudaGetErrorString(rc));
    uuids.emplace_back(prop.uuid.bytes, kUuidBytes);
  }
#else
  (void)gpus;
#endif
  return uuids;
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

std::vector<std::vector<std::string>> gather_uuids_on_node(const std::vector<std::string>& mine) {
  for (const std::string& uuid : mine)
    if (uuid.size() != kUuidBytes)
      throw std::invalid_argument("a GPU UUID is 16 bytes, not " + std::to_string(uuid.size()));
  MPI_Comm node;
  mpi_check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
            "Comm_split_type(shared)");
  int ranks = 0;
  MPI_Comm_size(node, &ranks);
  const int count = static_cast<int>(mine.size() * kUuidBytes);
  std::vector<int> counts(static_cast<std::size_t>(ranks)), offsets(counts.size());
  mpi_check(MPI_Allgather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, node), "Allgather");
  int total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    offsets[r] = total;
    total += counts[r];
  }
  std::string packed;
  for (const std::string& uuid : mine)
    packed += uuid;
  std::string all(static_cast<std::size_t>(total), '\0');
  mpi_check(MPI_Allgatherv(packed.data(), count, MPI_CHAR, all.data(), counts.data(),
                           offsets.data(), MPI_CHAR, node),
            "Allgatherv");
  MPI_Comm_free(&node);
  std::vector<std::vector<std::string>> by_rank(counts.size());
  for (std::size_t r = 0; r < counts.size(); ++r)
    for (int b = 0; b < counts[r]; b += static_cast<int>(kUuidBytes))
      by_rank[r].push_back(all.substr(static_cast<std::size_t>(offsets[r] + b), kUuidBytes));
  return by_rank;
}

bool gpus_bound_per_rank(const std::vector<std::vector<std::string>>& visible) {
  if (visible.size() < 2) return false;
  std::set<std::string> seen;
  for (const auto& uuids : visible) {
    if (uuids.empty()) return false;
    for (const std::string& uuid : uuids)
      if (!seen.insert(uuid).second) return false;
  }
  return true;
}

c10::Device device_for_rank(const DeviceRequest& request, int local_rank, int local_ranks,
                            int visible_gpus, bool bound_per_rank) {
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
  if (bound_per_rank) return c10::Device(c10::kCUDA, 0);  // the first of this rank's own GPUs
  if (local_ranks > visible_gpus)
    throw std::invalid_argument(
        std::to_string(local_ranks) + " ranks on this node but " + std::to_string(visible_gpus) +
        " visible GPU(s)" + visible_devices_note() +
        ", the same on every rank: start at most one rank per GPU, bind a GPU to each rank "
        "(Slurm's --gpus-per-task=1, or a CUDA_VISIBLE_DEVICES per rank), or set device: cuda:N "
        "to share GPU N on purpose");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

c10::Device rank_device(const World& world, const DeviceRequest& request) {
  // Asking the CUDA runtime costs a context probe: skip it when the CPU is asked for.
  const int gpus =
      request.kind == DeviceRequest::Kind::cpu ? 0 : static_cast<int>(torch::cuda::device_count());
  // Uniform over the world (one config), so every rank takes part in the gather or none does.
  const bool per_local_rank = request.kind != DeviceRequest::Kind::cpu && request.index < 0;
  const bool bound = per_local_rank && world.size() > 1 &&
                     gpus_bound_per_rank(gather_uuids_on_node(visible_gpu_uuids(gpus)));
  c10::Device device = c10::kCPU;
  try {
    device = device_for_rank(request, world.local_rank(), world.local_size(), gpus, bound);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("node " + world.hostname() + ": " + e.what());
  }
  // The current device too: whatever allocates on "the current GPU" (CUDA contexts, library
  // workspaces) must not land on GPU 0 from every rank.
  if (device.is_cuda()) c10::impl::getDeviceGuardImpl(c10::kCUDA)->setDevice(device);
  return device;
}

}  // namespace difftrain::parallel
