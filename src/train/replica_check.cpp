#include "train/replica_check.hpp"

#include <torch/torch.h>
#include <zlib.h>

#include "parallel/communicator.hpp"

namespace difftrain::train {

uint32_t fingerprint(const std::vector<at::Tensor>& tensors) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (const at::Tensor& t : tensors) {
    if (!t.defined()) continue;
    const at::Tensor host = t.detach().cpu().contiguous();
    crc = crc32(crc, static_cast<const Bytef*>(host.data_ptr()), static_cast<uInt>(host.nbytes()));
  }
  return static_cast<uint32_t>(crc);
}

std::vector<int> diverged_ranks(const std::vector<at::Tensor>& tensors,
                                parallel::Communicator& comm) {
  // On the communicator's device (NCCL gathers CUDA tensors only).
  const auto device = tensors.empty() ? c10::Device(c10::kCPU) : tensors.front().device();
  const at::Tensor mine = at::full({1}, static_cast<int64_t>(fingerprint(tensors)),
                                   at::TensorOptions(device).dtype(at::kLong));
  const at::Tensor all = comm.all_gather(mine).cpu();
  std::vector<int> diverged;
  for (int r = 1; r < comm.size(); ++r)
    if (all[r].item<int64_t>() != all[0].item<int64_t>()) diverged.push_back(r);
  return diverged;
}

}  // namespace difftrain::train
