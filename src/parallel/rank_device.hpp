// The device a rank computes on, decided once per process and passed to everything that allocates
// (model, optimizer, EMA, sampler, loader staging, reducer buffers, held-out bits/dim, sampling,
// evaluation). One GPU per rank: local rank r of a node takes visible GPU r, unless the launcher
// bound GPUs to ranks (Slurm's --gpus-per-task or --gpu-bind, device cgroups, a
// CUDA_VISIBLE_DEVICES per rank): then every rank sees GPUs of its own, numbered from 0 by the CUDA
// runtime, and takes its first, cuda:0. The ranks of a node compare their GPUs' UUIDs to tell the
// two apart.
#pragma once

#include <c10/core/Device.h>

#include <string>
#include <string_view>
#include <vector>

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

// Every local rank's GPU UUIDs (16 bytes each), in local rank order: a collective of the world,
// each node's ranks gathering theirs.
std::vector<std::vector<std::string>> gather_uuids_on_node(const std::vector<std::string>& mine);

// Whether each rank of a node sees GPUs of its own. `visible` holds, per local rank, the UUIDs of
// the GPUs it sees: true when there are several ranks, each sees a GPU, and no GPU is seen by two.
bool gpus_bound_per_rank(const std::vector<std::vector<std::string>>& visible);

// With GPUs bound per rank, auto and cuda take the rank's first visible GPU. Otherwise more local
// ranks than visible GPUs (auto, cuda) is an error naming both numbers, never a silent
// wrap-around that would put two ranks on one GPU. Throws std::invalid_argument.
c10::Device device_for_rank(const DeviceRequest& request, int local_rank, int local_ranks,
                            int visible_gpus, bool bound_per_rank = false);

// The same for this process, made the current CUDA device: the local rank from MPI (the ranks
// sharing this node's memory), the visible GPUs from the CUDA runtime. For auto and cuda on more
// than one rank it is a collective of the world (the ranks of each node gather their GPUs'
// UUIDs): every rank must call it.
c10::Device rank_device(const World& world, const DeviceRequest& request);

}  // namespace difftrain::parallel
