// Training-step throughput of difftrain's UNet, hybrid loss, AdamW and EMA on one rank, with a
// breakdown by phase. Needs no data: the batch is random, in [-1, 1] (the loader is measured by
// bench_loader). Not a test: the numbers go to JSON (bench/run.sh collects them).
//
//   build/bench_train_step --config configs/fashion_mnist.yaml --set model.image_size=32
//       --set model.in_channels=1 [--batch 8] [--threads 1] [--precision fp32|bf16]
//       [--steps 5] [--repeats 3] [--warmup 1] [--export FILE] [--out FILE] [--profile TRACE]
//       [--device cpu|cuda] [--cuda-trace TRACE]
//
// --export FILE writes the initial weights (the C++ state dict; zero-initialised layers made
// random, see main), the fixed batch, the betas and the first step's per-sample losses and
// gradient norm (dropout off) as a pickled Dict[str, Tensor] that Python's torch.load reads, and
// FILE.json with the model config: the PyTorch baseline (bench/baseline/train_step.py) starts
// from exactly these and checks the losses and gradient norm.
//
// Phases per step: data (the step's noise, as the trainer draws it; the images are a fixed
// batch), sampler (timestep draw, loss recording), forward (q_sample, the network under autocast,
// the loss terms), backward, optimizer (gradient norm with its one host sync, AdamW), EMA. Forward
// and backward are timed apart by a copy of train/train_step.cpp's forward_backward for one
// microbatch and no reducer; the first step checks that the copy computes exactly what
// forward_backward computes (same losses, same gradient norm).
//
// --cuda-trace (CUDA) profiles 3 more steps with the Kineto profiler, CPU ops and GPU kernels, into
// a Chrome trace, and reports in the JSON how much of those steps' wall time the GPU was busy
// (kernels and copies, overlaps counted once) against the gaps between them, with the kernels
// that took the most time.
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "diffusion/gaussian_diffusion.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "model/parameter_count.hpp"
#include "model/unet.hpp"
#include "train/adamw.hpp"
#include "train/autocast_scope.hpp"
#include "train/config.hpp"
#include "train/ema.hpp"
#include "train/metrics.hpp"
#include "train/setup.hpp"
#include "train/train_step.hpp"

namespace {

using namespace difftrain;
using Clock = std::chrono::steady_clock;
using json = nlohmann::ordered_json;

// The wall clock, read on CUDA after the device has finished the work queued so far.
struct StepClock {
  c10::Device device;
  Clock::time_point now() const {
    if (device.is_cuda()) torch::cuda::synchronize();
    return Clock::now();
  }
  double ms_since(Clock::time_point t0) const {
    return std::chrono::duration<double, std::milli>(now() - t0).count();
  }
};

// min / median / max of a list (the median of an even count is the mean of the middle two).
json summary(std::vector<double> v) {
  if (v.empty()) return nullptr;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  const double median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return json{{"min", v.front()}, {"median", median}, {"max", v.back()}, {"values", v}};
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v)
    s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

at::Tensor grad_norm(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  return at::stack(at::_foreach_norm(grads)).to(at::kFloat).norm();
}

struct Timed {
  train::StepTerms terms;
  double forward_ms = 0, backward_ms = 0;
};

// train::forward_backward for microbatch = batch and no reducer, with the forward and backward
// timed apart. Keep in step with src/train/train_step.cpp.
Timed timed_forward_backward(const StepClock& clock, model::UNetImpl& net,
                             const diffusion::GaussianDiffusion& d, const diffusion::LossSpec& spec,
                             const train::StepInputs& in, const train::StepSettings& s) {
  Timed r;
  const int64_t b = in.x_start.size(0);
  auto start = clock.now();
  const at::Tensor x_t = diffusion::q_sample(d, in.x_start, in.t, in.noise);
  at::Tensor model_output;
  {
    train::AutocastScope autocast(in.x_start.device().type(), s.autocast, s.autocast_dtype);
    model_output = net.forward(x_t, in.t.to(at::kFloat) * s.timestep_scale, in.labels);
  }
  auto terms = diffusion::training_terms(d, spec, model_output.to(at::kFloat), in.x_start, x_t,
                                         in.t, in.noise);
  const at::Tensor loss = (terms.loss * in.weights).sum() / static_cast<double>(b);
  r.forward_ms = clock.ms_since(start);
  start = clock.now();
  loss.backward();
  r.backward_ms = clock.ms_since(start);
  r.terms.loss = terms.loss.detach().to(at::kDouble);
  r.terms.mse = terms.mse.detach().to(at::kDouble);
  r.terms.vb = terms.vb.detach().to(at::kDouble);
  return r;
}

// GPU time of `steps` profiled steps that took `wall_ms`: the union of the GPU activities'
// intervals (kernels, copies, memsets; concurrent ones counted once) and the top ones by time.
json gpu_time_summary(const std::vector<torch::autograd::profiler::KinetoEvent>& events,
                      double wall_ms, int steps) {
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  std::map<std::string, std::pair<double, int64_t>> by_name;  // total ns, count
  for (const auto& e : events) {
    if (e.deviceType() != c10::DeviceType::CUDA || e.durationNs() == 0) continue;
    spans.emplace_back(e.startNs(), e.endNs());
    auto& [ns, count] = by_name[e.name()];
    ns += static_cast<double>(e.durationNs());
    ++count;
  }
  std::sort(spans.begin(), spans.end());
  double busy_ns = 0;
  uint64_t open = 0, close = 0;
  for (const auto& [begin, end] : spans) {
    if (begin > close) {
      busy_ns += static_cast<double>(close - open);
      open = begin;
    }
    close = std::max(close, end);
  }
  busy_ns += static_cast<double>(close - open);
  std::vector<std::pair<double, std::string>> top;
  for (const auto& [name, v] : by_name)
    top.emplace_back(v.first, name);
  std::sort(top.rbegin(), top.rend());
  json activities = json::array();
  for (std::size_t i = 0; i < std::min<std::size_t>(top.size(), 12); ++i)
    activities.push_back({{"name", top[i].second.substr(0, 120)},
                          {"ms_per_step", top[i].first / 1e6 / steps},
                          {"count_per_step", by_name[top[i].second].second / steps}});
  const double busy_ms = busy_ns / 1e6;
  return json{{"steps", steps},
              {"wall_ms_per_step", wall_ms / steps},
              {"gpu_busy_ms_per_step", busy_ms / steps},
              {"gpu_busy_fraction", wall_ms > 0 ? busy_ms / wall_ms : 0.0},
              {"gpu_activities_per_step", static_cast<double>(spans.size()) / steps},
              {"top_gpu_activities", activities},
              {"note",
               "3 steps under the Kineto profiler (its overhead included in the wall "
               "time); busy = the union of the GPU activities' intervals"}};
}

json model_json(const model::UNetConfig& c, bool channels_last) {
  return json{{"image_size", c.image_size},
              {"in_channels", c.in_channels},
              {"model_channels", c.model_channels},
              {"out_channels", c.out_channels},
              {"num_res_blocks", c.num_res_blocks},
              {"attention_resolutions", c.attention_resolutions},
              {"dropout", c.dropout},
              {"channel_mult", c.channel_mult},
              {"conv_resample", c.conv_resample},
              {"num_classes", c.num_classes},
              {"num_heads", c.num_heads},
              {"num_head_channels", c.num_head_channels},
              {"use_scale_shift_norm", c.use_scale_shift_norm},
              {"channels_last", channels_last}};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_train_step: training-step throughput and breakdown (one rank, CPU)"};
  std::string config_path, export_path, out, profile_path;
  std::vector<std::string> sets;
  int64_t batch = 8, steps = 5, repeats = 3, warmup = 1;
  int threads = 1;
  std::string precision = "fp32", device_name = "cpu";
  app.add_option("--config", config_path, "Config YAML")->required();
  app.add_option("--set", sets, "Override section.key=value (repeatable)");
  app.add_option("--batch", batch, "Batch size")->default_val(batch);
  app.add_option("--threads", threads, "Intra-op threads")->default_val(threads);
  app.add_option("--precision", precision, "fp32 | bf16 (autocast)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->default_val(precision);
  app.add_option("--steps", steps, "Timed steps per repeat")->default_val(steps);
  app.add_option("--repeats", repeats, "Repeats (min/median/max over these)")->default_val(repeats);
  app.add_option("--warmup", warmup, "Untimed steps first")->default_val(warmup);
  app.add_option("--export", export_path, "Write weights + batch + first-step losses here");
  app.add_option("--out", out, "JSON results file (also printed)");
  app.add_option("--device", device_name, "cpu | cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->default_val(device_name);
  app.add_option("--profile", profile_path,
                 "After the timed steps, profile 3 more steps into this Chrome trace");
  std::string cuda_trace_path;
  app.add_option("--cuda-trace", cuda_trace_path,
                 "CUDA: after the timed steps, 3 more steps under the Kineto profiler (ops and "
                 "kernels) into this Chrome trace; GPU busy time against wall time in the JSON");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$: %v");

  try {
    at::set_num_threads(threads);
    if (device_name == "cuda" && !torch::cuda::is_available())
      throw std::runtime_error("--device cuda: LibTorch finds no CUDA device");
    const c10::Device device =
        device_name == "cuda" ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
    const StepClock clock{device};
    const train::Config config = train::load_config(config_path, sets);
    const train::DataShape shape = train::data_shape(config, nullptr);
    const model::UNetConfig unet_config = train::unet_config(config, shape);
    torch::manual_seed(config.seed);
    model::UNet net(unet_config);
    const bool channels_last = train::use_channels_last(config, precision);
    if (channels_last) net->to(at::MemoryFormat::ChannelsLast);
    const std::vector<at::Tensor> params = net->parameters();
    // The zero-initialised layers (each block's last conv, proj_out, the output conv) would make
    // the network's output 0 and every gradient but the output conv's 0: the first-step check
    // against the baseline would then not see the network. They get small random values.
    int64_t perturbed = 0;
    {
      torch::NoGradGuard no_grad;
      auto pgen = at::make_generator<at::CPUGeneratorImpl>(99);
      for (const auto& p : params)
        if (p.abs().max().item<double>() == 0) {
          p.copy_(at::randn(p.sizes(), pgen) * 0.02);
          ++perturbed;
        }
    }
    net->to(device);
    const diffusion::GaussianDiffusion diffusion =
        diffusion::to_device(train::make_diffusion(config), device);
    const diffusion::LossSpec loss_spec = train::make_loss_spec(config);
    const long T = diffusion.num_timesteps;
    diffusion::TimestepSampler sampler = train::make_timestep_sampler(config, T, device);
    const auto& tc = config.training;
    train::AdamW optimizer = train::make_adamw(params, tc.lr, tc.weight_decay);
    std::vector<train::Ema> emas = train::make_emas(tc.ema_rates, params);

    const int64_t C = shape.channels, H = shape.image_size;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
    // Drawn on the CPU (as the trainer draws them), then moved to the device.
    const at::Tensor x = (at::rand({batch, C, H, H}, gen) * 2 - 1).to(device);
    const at::Tensor t0 = diffusion::draw_timesteps(sampler, batch, gen).t.to(device);
    const at::Tensor noise0 = at::randn({batch, C, H, H}, gen).to(device);
    const at::Tensor labels =
        shape.num_classes > 0 ? at::randint(shape.num_classes, {batch}, gen, at::kLong).to(device)
                              : at::Tensor();
    const at::Tensor ones = at::ones({batch}, at::TensorOptions(device).dtype(at::kDouble));

    train::StepSettings settings;
    settings.timestep_scale = train::timestep_scale(config);
    settings.autocast = precision == "bf16";
    settings.autocast_dtype = at::kBFloat16;

    // The first step's losses and gradient norm on the fixed batch, dropout off: what the
    // baseline must reproduce from the same weights.
    net->eval();
    const train::StepInputs check_inputs{x, t0, ones, noise0, labels};
    const train::StepTerms check =
        train::forward_backward(*net, diffusion, loss_spec, check_inputs, settings, nullptr);
    const double check_grad_norm = grad_norm(params).item<double>();
    // The timed copy of forward_backward on the same inputs: it must compute the same thing
    // (checked in fp32 runs; bf16 runs the same code).
    double copy_grad_norm = check_grad_norm, copy_loss_diff = 0;
    const bool check_copy = precision == "fp32";
    if (check_copy) {
      optimizer.state->zero_grad();
      const Timed copy =
          timed_forward_backward(clock, *net, diffusion, loss_spec, check_inputs, settings);
      copy_grad_norm = grad_norm(params).item<double>();
      copy_loss_diff = (copy.terms.loss - check.loss).abs().max().item<double>();
    }
    net->train();
    optimizer.state->zero_grad();
    json check_json{
        {"precision", precision},
        {"loss_mean", check.loss.mean().item<double>()},
        {"mse_mean", check.mse.mean().item<double>()},
        {"vb_mean", check.vb.mean().item<double>()},
        {"grad_norm", check_grad_norm},
        {"timed_copy_loss_max_abs_diff", copy_loss_diff},
        {"timed_copy_grad_norm", copy_grad_norm},
        {"timed_copy_checked", check_copy},
        {"timed_copy_matches", copy_loss_diff == 0 && copy_grad_norm == check_grad_norm}};
    if (copy_loss_diff != 0 || copy_grad_norm != check_grad_norm)
      spdlog::warn(
          "the timed copy of forward_backward differs from it: loss by {}, grad norm {} vs {}",
          copy_loss_diff, copy_grad_norm, check_grad_norm);

    if (!export_path.empty()) {
      c10::Dict<std::string, at::Tensor> d;
      for (const auto& p : net->named_parameters())
        d.insert("state/" + p.key(), p.value().detach().cpu().contiguous().clone());
      for (const auto& b : net->named_buffers())
        d.insert("state/" + b.key(), b.value().detach().cpu().contiguous().clone());
      d.insert("batch/x", x.cpu());
      d.insert("batch/t", t0.cpu());
      d.insert("batch/noise", noise0.cpu());
      if (labels.defined()) d.insert("batch/labels", labels.cpu());
      d.insert("diffusion/betas", diffusion.betas.cpu());
      d.insert("check/loss", check.loss.cpu());
      d.insert("check/mse", check.mse.cpu());
      d.insert("check/vb", check.vb.cpu());
      d.insert("check/grad_norm", at::scalar_tensor(check_grad_norm, at::kDouble));
      const std::vector<char> bytes = torch::pickle_save(d);
      std::ofstream(export_path, std::ios::binary)
          .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      json meta{{"config", config_path},
                {"sets", sets},
                {"model", model_json(unet_config, channels_last)},
                {"parameters", model::parameter_count(net)},
                {"num_timesteps", T},
                {"timestep_scale", settings.timestep_scale},
                {"vb_scale", loss_spec.vb_scale},
                {"lr", tc.lr},
                {"weight_decay", tc.weight_decay},
                {"ema_rates", tc.ema_rates},
                {"ema_warmup", tc.ema_warmup},
                {"check", check_json}};
      std::ofstream(export_path + ".json") << meta.dump(2) << '\n';
    }

    // The timed steps: repeats x steps, after `warmup` untimed ones.
    std::vector<double> step_ms, data_ms, sampler_ms, fwd_ms, bwd_ms, opt_ms, ema_ms;
    std::vector<double> rate, r_step, r_data, r_sampler, r_fwd, r_bwd, r_fb, r_opt, r_ema;
    int64_t n = 0;
    const auto one_step = [&] {
      const auto start = clock.now();
      auto phase = start;
      const at::Tensor noise = at::randn({batch, C, H, H}, gen).to(device);
      data_ms.push_back(clock.ms_since(phase));
      phase = clock.now();
      diffusion::TimestepDraw draw = diffusion::draw_timesteps(sampler, batch, gen);
      draw.t = draw.t.to(device);
      draw.weights = draw.weights.to(device);
      sampler_ms.push_back(clock.ms_since(phase));
      phase = clock.now();
      optimizer.state->zero_grad();
      const Timed fb = timed_forward_backward(clock, *net, diffusion, loss_spec,
                                              {x, draw.t, draw.weights, noise, labels}, settings);
      fwd_ms.push_back(fb.forward_ms);
      bwd_ms.push_back(fb.backward_ms);
      const train::StepTerms& terms = fb.terms;
      phase = clock.now();
      if (diffusion::records_losses(sampler)) {
        diffusion::record_losses(sampler, draw.t, terms.loss);
        sampler_ms.back() += clock.ms_since(phase);
      }
      phase = clock.now();
      // As the trainer: the skip decision stays on the device.
      const at::Tensor skip = at::isfinite(grad_norm(params)).logical_not().to(at::kFloat);
      train::adamw_step(optimizer, tc.lr, skip);
      opt_ms.push_back(clock.ms_since(phase));
      phase = clock.now();
      train::update_emas(emas, params, n, tc.ema_warmup, skip);
      ema_ms.push_back(clock.ms_since(phase));
      step_ms.push_back(clock.ms_since(start));
      ++n;
    };
    for (int64_t r = -1; r < repeats; ++r) {
      const int64_t count = r < 0 ? warmup : steps;
      for (auto* v : {&step_ms, &data_ms, &sampler_ms, &fwd_ms, &bwd_ms, &opt_ms, &ema_ms})
        v->clear();
      for (int64_t s = 0; s < count; ++s)
        one_step();
      if (r < 0) continue;
      double total = 0;
      for (double v : step_ms)
        total += v;
      rate.push_back(1000.0 * static_cast<double>(batch * steps) / total);
      r_step.push_back(mean(step_ms));
      r_data.push_back(mean(data_ms));
      r_sampler.push_back(mean(sampler_ms));
      r_fwd.push_back(mean(fwd_ms));
      r_bwd.push_back(mean(bwd_ms));
      r_fb.push_back(r_fwd.back() + r_bwd.back());
      r_opt.push_back(mean(opt_ms));
      r_ema.push_back(mean(ema_ms));
    }

    if (!profile_path.empty()) {
      // Three more steps under LibTorch's profiler (one is too noisy): a Chrome trace of every
      // ATen op, which bench/profile_summary.py --steps 3 turns into self time per op and step.
      torch::autograd::profiler::RecordProfile guard(profile_path);
      for (int i = 0; i < 3; ++i)
        one_step();
    }

    json cuda_trace = nullptr;
    if (!cuda_trace_path.empty()) {
      if (!device.is_cuda()) throw std::runtime_error("--cuda-trace needs --device cuda");
      namespace prof = torch::profiler::impl;
      const prof::ProfilerConfig profiler_config(prof::ProfilerState::KINETO);
      const std::set<prof::ActivityType> activities{prof::ActivityType::CPU,
                                                    prof::ActivityType::CUDA};
      torch::autograd::profiler::prepareProfiler(profiler_config, activities);
      torch::autograd::profiler::enableProfiler(profiler_config, activities);
      const auto start = clock.now();
      for (int i = 0; i < 3; ++i)
        one_step();
      const double wall_ms = clock.ms_since(start);
      const auto result = torch::autograd::profiler::disableProfiler();
      result->save(cuda_trace_path);
      cuda_trace = gpu_time_summary(result->events(), wall_ms, 3);
    }

    json j;
    j["benchmark"] = "train_step";
    j["implementation"] = "difftrain";
    j["config"] = config_path;
    j["sets"] = sets;
    j["model"] = model_json(unet_config, channels_last);
    j["parameters"] = model::parameter_count(net);
    j["zero_init_tensors_randomised"] = perturbed;
    j["batch"] = batch;
    j["threads"] = threads;
    j["precision"] = precision;
    j["steps_per_repeat"] = steps;
    j["repeats"] = repeats;
    j["warmup"] = warmup;
    j["images_per_s"] = summary(rate);
    j["step_ms"] = summary(r_step);
    j["breakdown_ms"] = {{"data", summary(r_data)},           {"sampler", summary(r_sampler)},
                         {"forward", summary(r_fwd)},         {"backward", summary(r_bwd)},
                         {"forward_backward", summary(r_fb)}, {"all_reduce", nullptr},
                         {"optimizer", summary(r_opt)},       {"ema", summary(r_ema)}};
    j["notes"] =
        "per-repeat means of each phase, min/median/max over repeats; all_reduce: one rank "
        "(see scaling); forward and backward timed by a copy of forward_backward (see check)";
    j["check"] = check_json;
    j["device"] = device.str();
    if (!cuda_trace.is_null()) j["cuda_trace"] = cuda_trace;
    j["rss_mb"] = train::resident_memory_mb();
    if (device.is_cuda())
      j["cuda_peak_allocated_mb"] =
          static_cast<double>(c10::cuda::CUDACachingAllocator::getDeviceStats(0)
                                  .allocated_bytes[static_cast<std::size_t>(
                                      c10::CachingAllocator::StatType::AGGREGATE)]
                                  .peak) /
          (1 << 20);
    const std::string text = j.dump(2);
    fmt::print("{}\n", text);
    if (!out.empty()) std::ofstream(out) << text << '\n';
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 2;
  }
  return 0;
}
