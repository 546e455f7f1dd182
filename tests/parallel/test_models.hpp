// Small models and a counting communicator shared by the parallel tests.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <memory>

#include "parallel/communicator.hpp"

namespace difftrain::parallel::testing {

// ~150K parameters in 10 tensors: two convolutions, three linear layers, and an embedding that
// forward() uses only when `use_embedding` (an unused parameter otherwise).
struct SmallNetImpl : torch::nn::Module {
  SmallNetImpl() {
    conv1 =
        register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3).padding(1)));
    conv2 =
        register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 16, 3).padding(1)));
    fc1 = register_module("fc1", torch::nn::Linear(16 * 8 * 8, 128));
    fc2 = register_module("fc2", torch::nn::Linear(128, 128));
    fc3 = register_module("fc3", torch::nn::Linear(128, 10));
    embedding = register_module("embedding", torch::nn::Embedding(10, 128));
  }
  torch::Tensor forward(const torch::Tensor& x, bool use_embedding = false) {
    auto h = torch::relu(conv1(x));
    h = torch::relu(conv2(h)).flatten(1);
    h = torch::relu(fc1(h));
    if (use_embedding) h = h + embedding(torch::zeros({x.size(0)}, torch::kLong));
    h = torch::relu(fc2(h));
    return fc3(h);
  }
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
  torch::nn::Embedding embedding{nullptr};
};
TORCH_MODULE(SmallNet);

// The same model on every rank (seeded), a rank-dependent batch.
inline SmallNet make_net() {
  torch::manual_seed(0);
  return SmallNet();
}
inline torch::Tensor batch(int rank, int microbatch = 0) {
  torch::manual_seed(100 + 10 * rank + microbatch);
  return torch::randn({4, 3, 8, 8});
}
inline torch::Tensor loss_of(SmallNet& net, const torch::Tensor& x, bool use_embedding = false) {
  return net->forward(x, use_embedding).pow(2).mean();
}

// Forwards to another communicator and counts the all-reduces issued.
class CountingCommunicator final : public Communicator {
 public:
  explicit CountingCommunicator(Communicator& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return "counting " + inner_.backend(); }
  void all_reduce(at::Tensor& t, ReduceOp op) override {
    ++all_reduces;
    inner_.all_reduce(t, op);
  }
  std::unique_ptr<Work> all_reduce_async(at::Tensor& t, ReduceOp op) override {
    ++all_reduces;
    return inner_.all_reduce_async(t, op);
  }
  std::unique_ptr<Work> all_reduce_batch_async(std::vector<at::Tensor>& ts, ReduceOp op) override {
    all_reduces += static_cast<int>(ts.size());
    return inner_.all_reduce_batch_async(ts, op);
  }
  at::Tensor all_gather(const at::Tensor& t) override { return inner_.all_gather(t); }
  void broadcast(at::Tensor& t, int root) override { inner_.broadcast(t, root); }
  void barrier() override { inner_.barrier(); }
  int all_reduces = 0;

 private:
  Communicator& inner_;
};

}  // namespace difftrain::parallel::testing
