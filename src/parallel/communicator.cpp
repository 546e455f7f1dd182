#include "parallel/communicator.hpp"

namespace difftrain::parallel {
namespace {

// Several Works seen as one; wait() waits for each in launch order.
struct BatchWork final : Work {
  std::vector<std::unique_ptr<Work>> parts;
  void wait() override {
    for (auto& part : parts)
      part->wait();
  }
  bool test() override {
    bool done = true;
    for (auto& part : parts)
      done = part->test() && done;  // test every part: each one progresses
    return done;
  }
};

}  // namespace

std::unique_ptr<Work> Communicator::all_reduce_batch_async(std::vector<at::Tensor>& tensors,
                                                           ReduceOp op) {
  auto batch = std::make_unique<BatchWork>();
  for (auto& tensor : tensors)
    batch->parts.push_back(all_reduce_async(tensor, op));
  return batch;
}

}  // namespace difftrain::parallel
