// Host tensors on their way to a GPU: through pinned memory and a non-blocking copy, so that the
// host queues the copy behind the GPU's work instead of waiting for that work to drain (a copy
// from pageable memory synchronises). The pinned block returns to LibTorch's caching host
// allocator, which reuses it only after the copy has completed.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/TensorOptions.h>

namespace difftrain {

inline at::Tensor host_to_device(const at::Tensor& host, const c10::Device& device) {
  if (!device.is_cuda()) return host.to(device);
  return host.pin_memory().to(at::TensorOptions().device(device), /*non_blocking=*/true);
}

}  // namespace difftrain
