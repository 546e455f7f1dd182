// Gradient synchronisation of a real UNet on the ranks it runs on (figure 3 of the benchmarks):
//   1. raw MPI_Allreduce of one flat buffer of the model's gradient bytes,
//   2. the same bytes through GradReducer::finish() (buckets, views, averaging) with no backward,
//   3. forward + backward alone, and forward + backward with the reducer overlapping it: the
//      fraction of the all-reduce time hidden behind backward is 1 - (finish() wait after
//      backward) / (finish() alone).
// busbw = algbw * 2(W-1)/W (the bytes a ring all-reduce moves per rank). Prints one JSON object.
//   mpirun -np 2 build/bench_grad_sync [--config FILE] [--set k=v ...] [--batch B] [--repeats R]
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "diffusion/gaussian_diffusion.hpp"
#include "model/unet.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_reducer.hpp"
#include "parallel/world.hpp"
#include "train/config.hpp"
#include "train/setup.hpp"
#include "train/train_step.hpp"

using namespace difftrain;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Stats {
  std::vector<double> v;
  nlohmann::json json(double scale = 1) const {
    std::vector<double> s = v;
    std::sort(s.begin(), s.end());
    return {
        {"min", s.front() * scale}, {"median", s[s.size() / 2] * scale}, {"max", s.back() * scale}};
  }
  double median() const {
    std::vector<double> s = v;
    std::sort(s.begin(), s.end());
    return s[s.size() / 2];
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Gradient all-reduce of a real UNet: raw MPI vs the bucketed reducer, and overlap"};
  std::string config_path = "configs/fashion_mnist.yaml";
  std::vector<std::string> overrides;
  int64_t batch = 8;
  int repeats = 5;
  double bucket_mb = 25;
  app.add_option("--config", config_path, "Config whose model to use");
  app.add_option("--set", overrides, "Config override section.key=value");
  app.add_option("--batch", batch, "Images per rank per step");
  app.add_option("--repeats", repeats, "Timed repeats (the median is reported)");
  app.add_option("--bucket-mb", bucket_mb, "Gradient bucket size in MB (training.bucket_mb)");
  CLI11_PARSE(app, argc, argv);

  parallel::World world;
  at::set_num_threads(1);
  const int w = world.size();
  auto comm = parallel::make_mpi_communicator(world);
  train::Config c = train::load_config(config_path, overrides);
  if (c.model.image_size == 0) c.model.image_size = 32;
  if (c.model.in_channels == 0) c.model.in_channels = 1;
  c.data.class_conditional = false;
  const train::DataShape shape = train::data_shape(c, nullptr);
  torch::manual_seed(0);
  model::UNet net(train::unet_config(c, shape));
  const std::vector<at::Tensor> params = net->parameters();
  const auto diffusion = train::make_diffusion(c);
  c.training.microbatch = 0;
  const train::StepContext plain{train::make_denoiser(net, c), diffusion, train::make_loss_spec(c),
                                 c.training, *comm};
  const int64_t H = shape.image_size, C = shape.channels;
  const train::StepInputs in{at::rand({batch, C, H, H}) * 2 - 1,
                             at::randint(diffusion.num_timesteps, {batch}, at::kLong),
                             at::ones({batch}, at::kDouble),
                             at::randn({batch, C, H, H}),
                             {}};
  double bytes = 0;
  for (const auto& p : params)
    bytes += static_cast<double>(p.nbytes());
  const double bus = 2.0 * (w - 1) / w;

  // 1. Raw MPI_Allreduce of the same bytes, one flat buffer.
  at::Tensor flat = at::zeros({static_cast<int64_t>(bytes / 4)});
  comm->all_reduce(flat, parallel::ReduceOp::sum);
  Stats raw;
  for (int r = 0; r < repeats; ++r) {
    comm->barrier();
    const auto start = Clock::now();
    comm->all_reduce(flat, parallel::ReduceOp::sum);
    raw.v.push_back(seconds_since(start));
  }

  // 3a. Forward + backward alone (no communication).
  Stats compute;
  for (int r = 0; r <= repeats; ++r) {
    for (auto p : params)
      p.mutable_grad() = at::Tensor();
    comm->barrier();
    const auto start = Clock::now();
    train::forward_backward(plain, in);
    if (r > 0) compute.v.push_back(seconds_since(start));
  }

  parallel::GradReducerOptions ro;
  ro.bucket_bytes = static_cast<std::size_t>(bucket_mb * (1 << 20));
  parallel::GradReducer reducer(params, *comm, ro);
  train::StepContext with_reducer = plain;
  with_reducer.reducer = &reducer;
  // 2. The reducer's finish() alone: every bucket launched at once, no backward to hide behind.
  Stats finish_only;
  for (int r = 0; r <= repeats; ++r) {
    reducer.zero_grad();
    comm->barrier();
    const auto start = Clock::now();
    reducer.finish();
    if (r > 0) finish_only.v.push_back(seconds_since(start));
  }
  // 3b. Forward + backward with the reducer overlapping it, then finish().
  Stats overlapped, waited;
  for (int r = 0; r <= repeats; ++r) {
    reducer.zero_grad();
    comm->barrier();
    const auto start = Clock::now();
    train::forward_backward(with_reducer, in);
    const auto before_finish = Clock::now();
    reducer.finish();
    if (r > 0) {
      overlapped.v.push_back(seconds_since(start));
      waited.v.push_back(seconds_since(before_finish));
    }
  }

  if (world.rank() == 0) {
    // Exposed: what finish() still waits for after backward; the rest of the reducer's all-reduce
    // time ran during backward. (The difference of the two forward+backward times says the same
    // but drowns in their noise when communication is a few percent of the step.)
    const double hidden =
        w > 1 ? std::clamp(1.0 - waited.median() / finish_only.median(), 0.0, 1.0) : 1.0;
    nlohmann::json j{
        {"ranks", w},
        {"config", config_path},
        {"parameters", bytes / 4},
        {"gradient_mb", bytes / 1e6},
        {"bucket_mb", bucket_mb},
        {"buckets", reducer.num_buckets()},
        {"batch_per_rank", batch},
        {"raw_allreduce_ms", raw.json(1e3)},
        {"reducer_finish_ms", finish_only.json(1e3)},
        {"raw_busbw_gbs", bus * bytes / raw.median() / 1e9},
        {"reducer_busbw_gbs", bus * bytes / finish_only.median() / 1e9},
        {"reducer_vs_raw_busbw", raw.median() / finish_only.median()},
        {"forward_backward_ms", compute.json(1e3)},
        {"forward_backward_with_reducer_ms", overlapped.json(1e3)},
        {"finish_wait_after_backward_ms", waited.json(1e3)},
        {"allreduce_hidden_fraction", hidden},
        {"allreduce_share_of_step", finish_only.median() / overlapped.median()},
        // On the CPU the reduction itself (sums, copies) runs on the cores backward needs too.
        {"reducer_step_overhead", overlapped.median() / compute.median() - 1.0}};
    std::printf("%s\n", j.dump(2).c_str());
  }
  return 0;
}
