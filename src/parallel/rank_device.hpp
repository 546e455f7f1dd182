// The device a rank computes on, decided once per process and passed to everything that allocates
// (model, optimizer, EMA, sampler, loader staging, reducer buffers, held-out bits/dim, sampling,
// evaluation). One GPU per rank: local rank r of a node takes visible GPU r. The CUDA runtime
// numbers the GPUs that CUDA_VISIBLE_DEVICES leaves visible, so a launcher that narrows it per
// rank (one visible GPU each) gets cuda:0 on every rank, as it should.
#pragma once

#include <c10/core/Device.h>

#include <string>
#include <string_view>

namespace difftrain::parallel {

class World;

// What the config key `device` (and sample / eval's --device) asks for:
//   auto    a GPU per local rank when the node has GPUs, else the CPU;
//   cuda    a GPU per local rank; an error without GPUs;
//   cuda:N  GPU N on every rank of the node (several ranks may share it: explicit only);
//   cpu     the CPU.
struct DeviceRequest {
  enum class Kind { automatic, cpu, cuda };
  Kind kind = Kind::automatic;
  int index = -1;  // cuda:N; -1 = a GPU per local rank
  bool operator==(const DeviceRequest&) const = default;
};
// Throws std::invalid_argument naming the value and the valid ones.
DeviceRequest parse_device_request(std::string_view text);
std::string to_string(const DeviceRequest& request);

// More local ranks than visible GPUs (auto, cuda) is an error naming both numbers, never a
// silent wrap-around that would put two ranks on one GPU. Throws std::invalid_argument.
c10::Device device_for_rank(const DeviceRequest& request, int local_rank, int local_ranks,
                            int visible_gpus);

// The same for this process, made the current CUDA device: the local rank from MPI (the ranks
// sharing this node's memory), the visible GPUs from the CUDA runtime.
c10::Device rank_device(const World& world, const DeviceRequest& request);

}  // namespace difftrain::parallel
