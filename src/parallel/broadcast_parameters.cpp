#include "parallel/broadcast_parameters.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>

#include "parallel/communicator.hpp"

namespace difftrain::parallel {
namespace {

// FNV-1a over dtype and shape: the same on every rank and every build, unlike std::hash.
std::int64_t signature(const at::Tensor& tensor) {
  std::uint64_t h = 1469598103934665603ull;
  auto mix = [&h](std::int64_t value) {
    for (int byte = 0; byte < 8; ++byte) {
      h ^= static_cast<std::uint64_t>(value >> (8 * byte)) & 0xffu;
      h *= 1099511628211ull;
    }
  };
  mix(static_cast<std::int64_t>(tensor.scalar_type()));
  mix(tensor.dim());
  for (const std::int64_t size : tensor.sizes())
    mix(size);
  return static_cast<std::int64_t>(h);
}

std::string describe(const NamedTensor& named) {
  std::ostringstream out;
  out << "'" << named.name << "' " << named.tensor.scalar_type() << " " << named.tensor.sizes();
  return out.str();
}

}  // namespace

void broadcast_parameters(Communicator& comm, const std::vector<NamedTensor>& parameters,
                          const std::vector<NamedTensor>& buffers, int root) {
  std::vector<const NamedTensor*> all;
  for (const auto& p : parameters)
    all.push_back(&p);
  for (const auto& b : buffers)
    all.push_back(&b);
  const auto n = static_cast<std::int64_t>(all.size());
  const auto options = at::TensorOptions().dtype(at::kLong).device(
      all.empty() ? c10::Device(c10::kCPU) : all[0]->tensor.device());

  std::vector<std::int64_t> hashes;
  std::int64_t combined = 0;
  for (const NamedTensor* t : all) {
    hashes.push_back(signature(t->tensor));
    combined = combined * 1000003 + hashes.back();
  }
  const at::Tensor summary =
      at::tensor({n, combined}, options.device(c10::kCPU)).to(options.device());
  const at::Tensor gathered = comm.all_gather(summary).cpu().view({comm.size(), 2});
  if (!gathered.eq(gathered[root]).all().item<bool>()) {
    // Find the first tensor that differs, on every rank alike, from every rank's signatures.
    const std::int64_t longest = gathered.select(1, 0).max().item<std::int64_t>();
    at::Tensor mine = at::full({longest}, -1, options.device(c10::kCPU));
    for (std::int64_t i = 0; i < n; ++i)
      mine[i] = hashes[i];
    const at::Tensor every =
        comm.all_gather(mine.to(options.device())).cpu().view({comm.size(), longest});
    for (std::int64_t i = 0; i < longest; ++i) {
      for (int r = 0; r < comm.size(); ++r) {
        if (every[r][i].item<std::int64_t>() == every[root][i].item<std::int64_t>()) continue;
        std::string message = "broadcast_parameters: tensor " + std::to_string(i) +
                              " (parameters, then buffers) differs between rank " +
                              std::to_string(root) + " and rank " + std::to_string(r) +
                              " in dtype or shape; on rank " + std::to_string(comm.rank()) +
                              " it is " + (i < n ? describe(*all[i]) : "missing") + " (" +
                              std::to_string(n) + " tensors here)";
        throw std::runtime_error(message);
      }
    }
    throw std::runtime_error("broadcast_parameters: the ranks' tensor signatures differ");
  }

  at::NoGradGuard no_grad;
  for (const NamedTensor* named : all) {
    at::Tensor data = named->tensor.detach();  // shares storage: the broadcast writes in place
    if (data.is_contiguous()) {
      comm.broadcast(data, root);
    } else {
      at::Tensor staged = data.contiguous();
      comm.broadcast(staged, root);
      data.copy_(staged);
    }
  }
}

}  // namespace difftrain::parallel
