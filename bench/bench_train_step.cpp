// Training-step throughput of difftrain's UNet, loss, AdamW and EMA on one rank, with a breakdown
// by phase. Needs no data: the batch is random, in [-1, 1] (the loader is measured by
// bench_loader). Not a test: the numbers go to JSON (bench/run.sh collects them).
//
//   build/bench_train_step --config configs/fashion_mnist.yaml --set model.image_size=28
//       --set model.in_channels=1 [--batch 8] [--threads 1] [--precision fp32|bf16]
//       [--steps 5] [--repeats 3] [--warmup 1] [--export FILE] [--out FILE] [--profile TRACE]
//       [--device cpu|cuda] [--cuda-trace TRACE] [--phase-timing same|separate]
//
// Each timed step is the product's: draw_step_inputs, then train::train_step (the function the
// trainer calls, with its gradient reducer on a world of one); a repeat of them is timed as a
// whole. Its phases are timed through the step's hook, the device synchronised at each boundary:
// data (the step's timesteps and noise), forward (q_sample, the network under autocast, the loss
// terms), backward, sampler (the reducer's finish, a no-op on one rank, and the loss recording of
// loss-second-moment), optimizer (unscale, gradient norm, clipping, fused AdamW), EMA.
// --phase-timing same times them in the timed steps (the CPU's default: there the clock costs
// nothing); separate in one more repeat (CUDA's default: the synchronisations would keep the host
// from running ahead of the GPU, which the trainer's step relies on).
//
// --export FILE writes the initial weights (the C++ state dict; zero-initialised layers made
// random, see main), the fixed batch, the betas and the first step's per-sample losses and
// gradient norm (dropout off) as a pickled Dict[str, Tensor] that Python's torch.load reads, and
// FILE.json with the model config: the PyTorch baseline (bench/baseline/train_step.py) starts
// from exactly these and checks the losses and gradient norm.
//
// --cuda-trace profiles 3 more steps with the Kineto profiler, CPU ops and GPU kernels, into a
// Chrome trace, and reports in the JSON how much of those steps' wall time the GPU was busy
// (kernels and copies, overlaps counted once) against the gaps between them, with the kernels
// that took the most time. On the CPU it traces the CPU ops only. A profiler that fails is
// reported in the JSON (cuda_trace.error), which has the timings either way.
#include <ATen/ATen.h>
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
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "data/loader.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "model/parameter_count.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_reducer.hpp"
#include "train/config.hpp"
#include "train/metrics.hpp"
#include "train/setup.hpp"
#include "train/train_state.hpp"
#include "train/train_step.hpp"
#include "weights/model_json.hpp"

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

// 3 more steps under the Kineto profiler, CPU ops and, on CUDA, GPU kernels and copies: a Chrome
// trace to `path`, and gpu_time_summary of it (on the CPU the summary finds no GPU activity, and
// the path is rehearsed for the GPU check's --cpu run).
json traced_steps(const std::function<void()>& one_step, const StepClock& clock,
                  const c10::Device& device, const std::string& path) {
  namespace prof = torch::profiler::impl;
  const prof::ProfilerConfig config(prof::ProfilerState::KINETO);
  std::set<prof::ActivityType> activities{prof::ActivityType::CPU};
  if (device.is_cuda()) activities.insert(prof::ActivityType::CUDA);
  torch::autograd::profiler::prepareProfiler(config, activities);
  torch::autograd::profiler::enableProfiler(config, activities);
  double wall_ms = 0;
  try {
    const auto start = clock.now();
    for (int i = 0; i < 3; ++i)
      one_step();
    wall_ms = clock.ms_since(start);
  } catch (...) {
    torch::autograd::profiler::disableProfiler();
    throw;
  }
  const auto result = torch::autograd::profiler::disableProfiler();
  result->save(path);
  return gpu_time_summary(result->events(), wall_ms, 3);
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
  std::string phase_timing;
  app.add_option("--phase-timing", phase_timing,
                 "same: the phases are timed in the timed steps; separate: in one more repeat, "
                 "the timed steps running without a synchronisation (default: same on the CPU, "
                 "separate on CUDA)")
      ->check(CLI::IsMember({"same", "separate"}));
  app.add_option("--profile", profile_path,
                 "After the timed steps, profile 3 more steps into this Chrome trace");
  std::string cuda_trace_path;
  app.add_option("--cuda-trace", cuda_trace_path,
                 "After the timed steps, 3 more steps under the Kineto profiler (ops and, on "
                 "CUDA, kernels) into this Chrome trace; GPU busy time against wall time in the "
                 "JSON");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_pattern("[%H:%M:%S] %^%l%$: %v");

  try {
    if (device_name == "cuda" && !torch::cuda::is_available())
      throw std::runtime_error("--device cuda: LibTorch finds no CUDA device");
    const c10::Device device =
        device_name == "cuda" ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
    const StepClock clock{device};
    train::Config config = train::load_config(config_path, sets);
    train::apply_process_settings(config);  // as the trainer: TF32, cuDNN's benchmark mode
    at::set_num_threads(threads);           // --threads, whatever training.threads says
    config.training.batch_size = batch;
    config.training.microbatch = 0;
    config.training.precision =
        precision == "bf16" ? train::Precision::bf16 : train::Precision::fp32;
    const train::DataShape shape = train::data_shape(config, nullptr);
    const model::UNetConfig unet_config = train::unet_config(config, shape);
    auto comm = parallel::make_local_communicator();
    train::TrainState state = train::make_train_state(config, shape, device, *comm);
    const bool channels_last = train::use_channels_last(config, config.training.precision);
    const std::vector<at::Tensor> params = state.net->parameters();
    // The zero-initialised layers (each block's last conv, proj_out, the output conv) would make
    // the network's output 0 and every gradient but the output conv's 0: the first-step check
    // against the baseline would then not see the network. They get small random values.
    int64_t perturbed = 0;
    {
      torch::NoGradGuard no_grad;
      auto pgen = at::make_generator<at::CPUGeneratorImpl>(99);
      for (const auto& p : params)
        if (p.abs().max().item<double>() == 0) {
          p.copy_(at::randn(p.sizes(), pgen).to(p.device()) * 0.02);
          ++perturbed;
        }
    }
    state.emas = train::make_emas(config.training.ema_rates, params);
    const diffusion::GaussianDiffusion diffusion =
        diffusion::to_device(train::make_diffusion(config), device);
    parallel::GradReducer reducer(params, *comm);
    const train::StepContext context{train::make_denoiser(state.net, config),
                                     diffusion,
                                     train::make_loss_spec(config),
                                     config.training,
                                     *comm,
                                     &reducer};

    const int64_t C = shape.channels, H = shape.image_size;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
    data::Batch batch_data;
    batch_data.images = (at::rand({batch, C, H, H}, gen) * 2 - 1).to(device);
    if (shape.num_classes > 0)
      batch_data.labels = at::randint(shape.num_classes, {batch}, gen, at::kLong).to(device);
    const uint64_t seed = static_cast<uint64_t>(config.seed);

    // The first step's losses and gradient norm on the fixed batch, dropout off: what the
    // baseline must reproduce from the same (exported) weights.
    const train::StepInputs check_inputs =
        train::draw_step_inputs(seed, 0, state.sampler, batch_data, batch);
    json meta_model = weights::model_json(unet_config);
    meta_model["channels_last"] = channels_last;
    meta_model["fused_group_norm"] = config.model.fused_group_norm;
    c10::Dict<std::string, at::Tensor> exported;
    for (const auto& p : state.net->named_parameters())
      exported.insert("state/" + p.key(), p.value().detach().cpu().contiguous().clone());
    for (const auto& b : state.net->named_buffers())
      exported.insert("state/" + b.key(), b.value().detach().cpu().contiguous().clone());
    state.net->eval();
    const train::StepResult check = train::train_step(state, context, check_inputs);
    state.net->train();
    const double check_grad_norm = check.grad_norm.item<double>();
    json check_json{{"precision", precision},
                    {"loss_mean", check.terms.loss.mean().item<double>()},
                    {"mse_mean", check.terms.mse.mean().item<double>()},
                    {"vb_mean", check.terms.vb.mean().item<double>()},
                    {"grad_norm", check_grad_norm}};

    if (!export_path.empty()) {
      exported.insert("batch/x", batch_data.images.cpu());
      exported.insert("batch/t", check_inputs.t.cpu());
      exported.insert("batch/noise", check_inputs.noise.cpu());
      if (batch_data.labels.defined()) exported.insert("batch/labels", batch_data.labels.cpu());
      exported.insert("diffusion/betas", diffusion.betas.cpu());
      exported.insert("check/loss", check.terms.loss.cpu());
      exported.insert("check/mse", check.terms.mse.cpu());
      exported.insert("check/vb", check.terms.vb.cpu());
      exported.insert("check/grad_norm", at::scalar_tensor(check_grad_norm, at::kDouble));
      const std::vector<char> bytes = torch::pickle_save(exported);
      std::ofstream(export_path, std::ios::binary)
          .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      json meta{{"config", config_path},
                {"sets", sets},
                {"model", meta_model},
                {"parameters", model::parameter_count(state.net)},
                {"num_timesteps", diffusion.num_timesteps},
                {"timestep_scale", context.denoiser.timestep_scale},
                {"vb_scale", context.loss.vb_scale},
                {"lr", config.training.lr},
                {"weight_decay", config.training.weight_decay},
                {"ema_rates", config.training.ema_rates},
                {"ema_warmup", config.training.ema_warmup},
                {"check", check_json}};
      std::ofstream(export_path + ".json") << meta.dump(2) << '\n';
    }

    // The timed steps: repeats x steps after `warmup` untimed ones, each repeat timed as a whole
    // (the device synchronised at its ends only). The phases are timed through the step's hook
    // with the device synchronised at every boundary: on the CPU in the timed steps themselves
    // (its ops end before the host goes on, so the clock costs nothing), on CUDA in one more
    // repeat of their own, because the synchronisations would stop the host from queueing the
    // next phase while the GPU runs this one, and the throughput would be the trainer's no more.
    std::map<std::string, std::vector<double>> phase_ms;  // this repeat's steps
    std::vector<double> rate;
    std::map<std::string, std::vector<double>> repeat_ms;  // per phase, a mean per repeat
    const std::map<train::StepPhase, std::string> names{{train::StepPhase::forward, "forward"},
                                                        {train::StepPhase::backward, "backward"},
                                                        {train::StepPhase::all_reduce, "sampler"},
                                                        {train::StepPhase::optimizer, "optimizer"},
                                                        {train::StepPhase::ema, "ema"}};
    const auto one_step = [&](bool time_phases) {
      if (!time_phases) {
        train::train_step(
            state, context,
            train::draw_step_inputs(seed, state.step, state.sampler, batch_data, batch));
        return;
      }
      auto phase = clock.now();
      const train::StepInputs inputs =
          train::draw_step_inputs(seed, state.step, state.sampler, batch_data, batch);
      phase_ms["data"].push_back(clock.ms_since(phase));
      phase = clock.now();
      train::train_step(state, context, inputs, [&](train::StepPhase ended) {
        phase_ms[names.at(ended)].push_back(clock.ms_since(phase));
        phase = clock.now();
      });
    };
    const auto record_phases = [&] {  // this repeat's phases, a mean per step
      for (const auto& [name, values] : phase_ms)
        repeat_ms[name].push_back(mean(values) * static_cast<double>(values.size()) /
                                  static_cast<double>(steps));  // microbatches summed
      phase_ms.clear();
    };
    if (phase_timing.empty()) phase_timing = device.is_cuda() ? "separate" : "same";
    const bool phases_in_timed_steps = phase_timing == "same";
    for (int64_t r = -1; r < repeats; ++r) {
      const int64_t count = r < 0 ? warmup : steps;
      const auto start = clock.now();
      for (int64_t s = 0; s < count; ++s)
        one_step(phases_in_timed_steps);
      const double ms = clock.ms_since(start);
      if (r < 0) {
        phase_ms.clear();
        continue;
      }
      rate.push_back(1000.0 * static_cast<double>(batch * steps) / ms);
      repeat_ms["step"].push_back(ms / static_cast<double>(steps));
      if (phases_in_timed_steps) record_phases();
    }
    if (!phases_in_timed_steps) {
      for (int64_t s = 0; s < steps; ++s)
        one_step(true);
      record_phases();
    }
    repeat_ms["forward_backward"] = repeat_ms["forward"];
    for (std::size_t i = 0; i < repeat_ms["forward_backward"].size(); ++i)
      repeat_ms["forward_backward"][i] += repeat_ms["backward"][i];

    if (!profile_path.empty()) {
      // Three more steps under LibTorch's profiler (one is too noisy): a Chrome trace of every
      // ATen op, which bench/profile_summary.py --steps 3 turns into self time per op and step.
      torch::autograd::profiler::RecordProfile guard(profile_path);
      for (int i = 0; i < 3; ++i)
        one_step(false);
    }

    json j;
    j["benchmark"] = "train_step";
    j["implementation"] = "difftrain";
    j["config"] = config_path;
    j["sets"] = sets;
    j["model"] = meta_model;
    j["parameters"] = model::parameter_count(state.net);
    j["zero_init_tensors_randomised"] = perturbed;
    j["batch"] = batch;
    j["threads"] = threads;
    j["precision"] = precision;
    j["steps_per_repeat"] = steps;
    j["repeats"] = repeats;
    j["warmup"] = warmup;
    j["phase_timing"] = phase_timing;
    j["images_per_s"] = summary(rate);
    j["step_ms"] = summary(repeat_ms["step"]);
    j["breakdown_ms"] = {{"data", summary(repeat_ms["data"])},
                         {"sampler", summary(repeat_ms["sampler"])},
                         {"forward", summary(repeat_ms["forward"])},
                         {"backward", summary(repeat_ms["backward"])},
                         {"forward_backward", summary(repeat_ms["forward_backward"])},
                         {"all_reduce", nullptr},
                         {"optimizer", summary(repeat_ms["optimizer"])},
                         {"ema", summary(repeat_ms["ema"])}};
    j["notes"] =
        "the product's step (train::train_step); each repeat timed as a whole, its phases "
        "through the step's hook with the device synchronised at each boundary, in the timed "
        "steps (phase_timing same) or in one more repeat (separate); per-repeat means of each "
        "phase, min/median/max over repeats; data: the step's timesteps and noise "
        "(draw_step_inputs); sampler: the reducer's finish (one rank) and the loss recording; "
        "all_reduce: one rank (see scaling)";
    j["check"] = check_json;
    j["device"] = device.str();
    j["rss_mb"] = train::resident_memory_mb();
    if (const auto memory = train::device_memory_and_reset_peak(device))
      j["cuda_peak_allocated_mb"] = memory->peak_allocated_mb;
    const auto write = [&] {
      if (!out.empty()) std::ofstream(out) << j.dump(2) << '\n';
    };
    // The figures are written before the trace and again with it: a profiler that fails (no
    // CUPTI, say) costs the trace, not the throughput the bench was run for.
    write();
    if (!cuda_trace_path.empty()) {
      try {
        // The steps as the trainer runs them: the trace shows the gaps the host leaves.
        j["cuda_trace"] = traced_steps([&] { one_step(false); }, clock, device, cuda_trace_path);
      } catch (const std::exception& e) {
        spdlog::error("--cuda-trace: {}", e.what());
        j["cuda_trace"] = {{"error", e.what()}};
      }
      write();
    }
    fmt::print("{}\n", j.dump(2));
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 2;
  }
  return 0;
}
