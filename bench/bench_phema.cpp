// The cost of post-hoc EMA (train/phema.hpp) for a config's UNet: the per-step update of the
// tracked profiles against one _foreach_lerp_ and against the plain EMA update, and the time and
// size on disk of a snapshot. Needs no data (the model is sized by model.image_size and
// model.in_channels). Not a test.
//
//   build/bench_phema --config configs/cifar10_hybrid.yaml [--device cpu] [--threads 1]
//       [--repeats 20] [--snapshots 4] [--out DIR]
//
// --out DIR receives --snapshots snapshots of a random walk of the weights, under DIR/phema/, so
// that `difftrain phema --run DIR ...` can be timed on them (e.g. under /usr/bin/time -v for its
// peak memory).
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>

#include "model/parameter_count.hpp"
#include "model/unet.hpp"
#include "train/config.hpp"
#include "train/ema.hpp"
#include "train/phema.hpp"
#include "train/phema_snapshot.hpp"
#include "train/setup.hpp"

namespace {

using namespace difftrain;
using Clock = std::chrono::steady_clock;

// The median over `repeats` runs of `body`, in milliseconds; CUDA work is waited for.
template <typename F>
double median_ms(const c10::Device& device, int repeats, F body) {
  std::vector<double> ms;
  for (int i = 0; i < repeats + 1; ++i) {  // the first run warms up
    if (device.is_cuda()) torch::cuda::synchronize();
    const auto t0 = Clock::now();
    body();
    if (device.is_cuda()) torch::cuda::synchronize();
    if (i > 0) ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Post-hoc EMA costs: per-step update and snapshot size"};
  std::string config_path, device_name = "cpu", out;
  int threads = 1, repeats = 20, snapshots = 4;
  app.add_option("--config", config_path, "YAML experiment config")->required();
  app.add_option("--device", device_name, "cpu, cuda or cuda:N");
  app.add_option("--threads", threads, "Torch intra-op threads");
  app.add_option("--repeats", repeats, "Timed repetitions (the median is reported)");
  app.add_option("--snapshots", snapshots, "Snapshots written to --out");
  app.add_option("--out", out, "Run directory for the snapshots (default: a temporary one)");
  CLI11_PARSE(app, argc, argv);

  at::set_num_threads(threads);
  const c10::Device device(device_name);
  const train::Config config = train::load_config(config_path);
  const auto shape = train::data_shape(config, nullptr);
  torch::NoGradGuard no_grad;
  model::UNet net(train::unet_config(config, shape));
  net->to(device);
  const std::vector<at::Tensor> params = net->parameters();
  const auto& sigma_rels = config.training.phema.sigma_rels;
  fmt::print("{}: {} parameters in {} tensors, device {}, {} thread(s), profiles sigma_rel {}\n",
             config_path, model::parameter_count(net), params.size(), device.str(), threads,
             train::phema::format_sigma_rels(sigma_rels));

  std::vector<at::Tensor> copy;
  for (const at::Tensor& p : params)
    copy.push_back(p.clone());
  const double lerp_ms =
      median_ms(device, repeats, [&] { at::_foreach_lerp_(copy, params, 0.01); });
  const at::Tensor no_skip = at::zeros({}, at::TensorOptions(device).dtype(at::kFloat));
  std::vector<train::Ema> emas = train::make_emas({0.9999}, params);
  const double ema_ms =
      median_ms(device, repeats, [&] { train::update_emas(emas, params, 1000, false, no_skip); });
  train::phema::PowerFunctionEma ema = train::phema::make_power_function_ema(sigma_rels, params);
  const double phema_ms = median_ms(device, repeats, [&] {
    train::phema::update(ema, params, config.training.batch_size, no_skip);
  });
  fmt::print("one _foreach_lerp_ (scalar weight):     {:8.2f} ms\n", lerp_ms);
  fmt::print("plain EMA update (1 rate):              {:8.2f} ms\n", ema_ms);
  fmt::print("post-hoc EMA update ({} profiles):       {:8.2f} ms ({:.2f} lerps)\n",
             sigma_rels.size(), phema_ms, phema_ms / lerp_ms);

  namespace fs = std::filesystem;
  const std::string dir = out.empty() ? (fs::temp_directory_path() / "bench_phema").string() : out;
  const std::string yaml = train::to_yaml(config);
  for (int k = 1; k <= snapshots; ++k) {
    for (const at::Tensor& p : params)
      p.add_(at::randn_like(p) * 1e-3);
    train::phema::update(ema, params, config.training.batch_size, no_skip);
    const auto t0 = Clock::now();
    train::phema::write_snapshot(dir, k, ema, *net, yaml);
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    const auto bytes = fs::file_size(train::phema::snapshot_path(dir, k));
    fmt::print(
        "snapshot {}: {:.1f} MB ({:.3f} bytes per parameter per profile), written in {:.0f} "
        "ms\n",
        train::phema::snapshot_path(dir, k), bytes / 1e6,
        static_cast<double>(bytes) /
            static_cast<double>(model::parameter_count(net) * sigma_rels.size()),
        ms);
  }
  if (out.empty()) fs::remove_all(dir);
  return 0;
}
