// The CUDA paths on one GPU, each against the same computation on the CPU: randomness is drawn on
// the host, so both see the same inputs, and fp32 runs with TF32 off must agree to rounding. Every
// test is skipped where no GPU is visible; launch/gpu_check.sh runs them (ctest -L cuda).
//
// Tolerances (docs/gpu-check.md has them all): fp32 losses and gradients to 1e-4 of their
// magnitude, the fused AdamW on the same gradients to 1e-6 at lr 1e-3, whole runs and 2 ranks
// against 1 as tests/train/test_trainer.cpp compares ranks (cuda_test_util.hpp), bits/dim to 1e-4
// relative, sampled images to 2 of 255 levels.
//
// DIFFTRAIN_CUDA_TESTS_ON_CPU=1 rehearses the tests on a machine without a GPU (ctest label
// `rehearsal`, in the suite): the CPU stands in for the GPU. Each comparison is then met trivially,
// and what only a GPU shows (device memory, TF32) is skipped, but every test's own setup runs: its
// configs, command lines, files and tolerances' plumbing. A GPU is lent for minutes at a time; a
// test that fails there for a mistake of its own wastes them.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/record_function.h>
#if __has_include(<c10/cuda/CUDAFunctions.h>)
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "common/autocast_scope.hpp"
#include "cuda_test_util.hpp"
#include "data/loader.hpp"
#include "data/test_files.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "model/fused_group_norm.hpp"
#include "model/group_norm32.hpp"
#include "parallel/communicator.hpp"
#include "quality/fid_inception.hpp"
#include "tiny_run.hpp"
#include "train/adamw.hpp"
#include "train/classifier.hpp"
#include "train/classifier_trainer.hpp"
#include "train/denoiser.hpp"
#include "train/ema.hpp"
#include "train/heldout_bpd.hpp"
#include "train/metrics.hpp"
#include "train/phema.hpp"
#include "train/setup.hpp"
#include "train/step_rng.hpp"
#include "train/train_step.hpp"
#include "train/trainer.hpp"
#include "weights/pt_file.hpp"
#include "weights/state_dict.hpp"

namespace {

namespace fs = std::filesystem;
namespace tr = difftrain::train;
using difftrain::testing::checkpoint_tensors;
using difftrain::testing::expect_same_training;
using difftrain::testing::NoTf32;
using difftrain::testing::TempDir;

bool rehearsal() {
  const char* on = std::getenv("DIFFTRAIN_CUDA_TESTS_ON_CPU");
  return on != nullptr && std::string(on) == "1";
}
// The device under test, and how the command line names it.
const c10::Device kGpu = rehearsal() ? c10::Device(c10::kCPU) : c10::Device(c10::kCUDA, 0);
const std::string kGpuFlag = rehearsal() ? "cpu" : "cuda:0";

// max |a - b| over max |b|: 0 for equal tensors, about 1 for unrelated ones.
double relative_error(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ref = b.to(at::kCPU, at::kDouble);
  const double scale = ref.abs().max().item<double>();
  const double diff = (a.to(at::kCPU, at::kDouble) - ref).abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}

// The worst gradient difference, each parameter's against its largest magnitude plus 1e-2 of the
// largest of all gradients: the biases of convolutions that feed a GroupNorm have a gradient that
// is zero in exact arithmetic, and rounding noise (about 1e-12 of the largest in fp32) against
// which their own magnitude is no scale.
double relative_gradient_error(const std::vector<at::Tensor>& got,
                               const std::vector<at::Tensor>& want) {
  double largest = 0;
  for (const auto& g : want)
    largest = std::max(largest, g.abs().max().item<double>());
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const at::Tensor ref = want[i].to(at::kCPU, at::kDouble);
    const double diff = (got[i].to(at::kCPU, at::kDouble) - ref).abs().max().item<double>();
    worst = std::max(worst, diff / (ref.abs().max().item<double>() + 1e-2 * largest));
  }
  return worst;
}

// The config's UNet for 16x16 one-channel images, from seed 0, every weight moved by `scale` times
// a fixed normal draw (so that the zero-initialised output layers pass gradients), on `device`.
difftrain::model::UNet perturbed_unet(const tr::Config& c, const c10::Device& device,
                                      double scale) {
  torch::manual_seed(0);
  difftrain::model::UNet net(tr::unet_config(c, {16, 1, 0}));
  torch::NoGradGuard no_grad;
  auto g = tr::cpu_generator(7);
  for (auto& p : net->parameters())
    p.add_(at::randn(p.sizes(), g) * scale);
  net->to(device);
  return net;
}

std::vector<nlohmann::json> metrics_lines(const std::string& run_dir) {
  std::vector<nlohmann::json> lines;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (auto j = nlohmann::json::parse(line); j.contains("loss")) lines.push_back(j);
  return lines;
}

// `difftrain sample ARGS` with --device cpu and with --device cuda:0 (TF32 off), written to
// OUT_cpu.h5 and OUT_gpu.h5: the largest difference between their pixels, in levels of 255.
int sampled_pixels_apart(const std::string& args, const std::string& out) {
  std::vector<std::vector<uint8_t>> images;
  for (const auto& [device, side] : {std::pair{std::string("cpu"), "cpu"}, {kGpuFlag, "gpu"}}) {
    const auto r = difftrain::testing::run(difftrain::testing::kNoTf32Env + "OMP_NUM_THREADS=2 " +
                                           DIFFTRAIN_BINARY + " sample " + args + " --device " +
                                           device + " --out " + out + "_" + side);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("device " + device), std::string::npos) << r.output;
    images.push_back(difftrain::testing::read_raw_uint8(out + "_" + side + ".h5", "images"));
  }
  if (images[0].size() != images[1].size()) return 255;
  int worst = 0;
  for (std::size_t i = 0; i < images[0].size(); ++i)
    worst = std::max(worst, std::abs(images[0][i] - images[1][i]));
  return worst;
}

struct Cuda : ::testing::Test {
  void SetUp() override {
    if (!rehearsal()) DIFFTRAIN_REQUIRE_CUDA();
    at::set_num_threads(2);
    manifest =
        difftrain::testing::write_synthetic_set(dir / "data", {40, 24}, 14, 14, 1, 10).manifest;
  }
  tr::Config config(const std::string& run, const std::vector<std::string>& overrides = {}) {
    return tr::parse_config(difftrain::testing::tiny_config(manifest, dir / run), overrides);
  }
  tr::TrainResult train(const tr::Config& c, const c10::Device& device,
                        const tr::TrainOptions& options = {}) {
    auto comm = difftrain::parallel::make_local_communicator();
    tr::Cluster cluster{*comm, nullptr, {}, device};
    return tr::train(c, cluster, options);
  }

  TempDir dir;
  std::string manifest;
};

// The step of the runs below: 5 steps of 12 images at lr 1e-4 (test_trainer.cpp's kMpiOverrides).
const std::vector<std::string> kRunOverrides{"training.max_steps=5", "training.batch_size=12",
                                             "training.lr=0.0001"};

// forward_backward and the fused AdamW on the GPU against the CPU, from the same weights and
// inputs: the losses to 1e-4 of their largest magnitude; each gradient to 1e-4 of its largest
// magnitude plus 1e-6 of the largest of all gradients (the biases of convolutions that feed a
// GroupNorm have a gradient that is zero in exact arithmetic, and rounding noise of about 1e-7 of
// the largest in fp32); 3 AdamW updates with weight decay, applied to the same gradients, to 1e-6
// (a thousandth of the step at lr 1e-3). In fp32 on the CPU against float64, the worst meaningful
// gradient is off by 2e-6 of its magnitude, the median by 1e-6.
TEST_F(Cuda, TrainingStepMatchesTheCpuInFp32) {
  NoTf32 fp32;
  const tr::Config c = config("unused", {"training.weight_decay=0.01"});
  const auto make_net = [&](const c10::Device& device) { return perturbed_unet(c, device, 0.01); };
  auto g = tr::cpu_generator(1);
  const tr::StepInputs host{at::rand({8, 1, 16, 16}, g) * 2 - 1,
                            at::arange(8, at::kLong) * 6,
                            at::rand({8}, g) + 0.5,
                            at::randn({8, 1, 16, 16}, g),
                            {}};
  const auto on = [](const tr::StepInputs& in, const c10::Device& d) {
    return tr::StepInputs{in.x_start.to(d), in.t.to(d), in.weights.to(d), in.noise.to(d), {}};
  };
  const auto diffusion = tr::make_diffusion(c);
  const auto gpu_diffusion = difftrain::diffusion::to_device(diffusion, kGpu);
  auto comm = difftrain::parallel::make_local_communicator();

  difftrain::model::UNet cpu = make_net(at::kCPU), gpu = make_net(kGpu);
  const tr::StepContext on_cpu{tr::make_denoiser(cpu, c), diffusion, tr::make_loss_spec(c),
                               c.training, *comm};
  const tr::StepContext on_gpu{tr::make_denoiser(gpu, c), gpu_diffusion, tr::make_loss_spec(c),
                               c.training, *comm};
  const tr::StepTerms want = tr::forward_backward(on_cpu, host);
  const tr::StepTerms got = tr::forward_backward(on_gpu, on(host, kGpu));
  ASSERT_EQ(got.loss.device(), kGpu);
  EXPECT_LT(relative_error(got.loss, want.loss), 1e-4);
  EXPECT_LT(relative_error(got.mse, want.mse), 1e-4);
  EXPECT_LT(relative_error(got.vb, want.vb), 1e-4);
  const auto names = cpu->named_parameters().keys();
  const auto cpu_params = cpu->parameters(), gpu_params = gpu->parameters();
  double largest = 0;
  for (const auto& p : cpu_params)
    largest = std::max(largest, p.grad().abs().max().item<double>());
  for (std::size_t i = 0; i < cpu_params.size(); ++i) {
    ASSERT_TRUE(gpu_params[i].grad().defined()) << names[i];
    const at::Tensor& want_grad = cpu_params[i].grad();
    const double diff = (gpu_params[i].grad().cpu() - want_grad).abs().max().item<double>();
    EXPECT_LE(diff, 1e-4 * want_grad.abs().max().item<double>() + 1e-6 * largest) << names[i];
    // The fused AdamW below sees the same gradients on both devices.
    gpu_params[i].mutable_grad().copy_(cpu_params[i].grad());
  }

  tr::AdamW cpu_adam = tr::make_adamw(cpu_params, 1e-3, 0.01, names);
  tr::AdamW gpu_adam = tr::make_adamw(gpu_params, 1e-3, 0.01, names);
  for (int step = 0; step < 3; ++step) {
    tr::adamw_step(cpu_adam, 1e-3, at::zeros({}));
    tr::adamw_step(gpu_adam, 1e-3, at::zeros({}, at::TensorOptions(kGpu)));
  }
  for (std::size_t i = 0; i < cpu_params.size(); ++i) {
    const double diff = (gpu_params[i].cpu() - cpu_params[i]).abs().max().item<double>();
    EXPECT_LT(diff, 1e-6) << names[i];
  }
  EXPECT_EQ(gpu_adam.steps.item<float>(), 3.0f);
}

// Elementwise ATen ops by name while a callback is installed: how many per-tensor kernels a
// foreach op fell back to.
std::atomic<int> elementwise_ops{0};
std::unique_ptr<at::ObserverContext> count_elementwise(const at::RecordFunction& fn) {
  const std::string name = fn.name();
  for (const char* op : {"aten::lerp_", "aten::mul_", "aten::mul", "aten::add_", "aten::add"})
    if (name == op) ++elementwise_ops;
  return nullptr;
}

// The EMA and the post-hoc EMA profiles move on the GPU in multi-tensor kernels, not one lerp per
// parameter (a 0-dim weight tensor per parameter sends _foreach_lerp_ down its per-tensor path on
// CUDA), and agree with the CPU's per-tensor lerps to 1e-6 (fp32 rounding) over 3 updates, one of
// them skipped.
TEST_F(Cuda, AveragesMoveInMultiTensorKernelsAsOnTheCpu) {
  const tr::Config c = config("unused");
  difftrain::model::UNet cpu = perturbed_unet(c, at::kCPU, 0.01),
                         gpu = perturbed_unet(c, kGpu, 0.01);
  std::vector<at::Tensor> cpu_params = cpu->parameters(), gpu_params = gpu->parameters();
  auto cpu_emas = tr::make_emas({0.9, 0.999}, cpu_params);
  auto gpu_emas = tr::make_emas({0.9, 0.999}, gpu_params);
  auto cpu_phema = tr::phema::make_power_function_ema({0.05, 0.1}, cpu_params);
  auto gpu_phema = tr::phema::make_power_function_ema({0.05, 0.1}, gpu_params);
  auto g = tr::cpu_generator(3);
  for (int n = 0; n < 3; ++n) {
    {
      torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < cpu_params.size(); ++i) {
        const at::Tensor step = at::randn(cpu_params[i].sizes(), g) * 0.01;
        cpu_params[i].add_(step);
        gpu_params[i].add_(step.to(kGpu));
      }
    }
    const at::Tensor skip = at::full({}, n == 1 ? 1.0 : 0.0);
    tr::update_emas(cpu_emas, cpu_params, n, /*warmup=*/true, skip);
    tr::phema::update(cpu_phema, cpu_params, 12, skip);
    elementwise_ops = 0;
    const auto handle = at::addThreadLocalCallback(
        at::RecordFunctionCallback(count_elementwise).scopes({at::RecordScope::FUNCTION}));
    tr::update_emas(gpu_emas, gpu_params, n, /*warmup=*/true, skip.to(kGpu));
    tr::phema::update(gpu_phema, gpu_params, 12, skip.to(kGpu));
    at::removeCallback(handle);
    // A handful for the weights themselves; the per-tensor path takes one per parameter and
    // average, which the rehearsal's CPU does (so the count is seen to count).
    if (rehearsal()) {
      EXPECT_GE(elementwise_ops.load(), static_cast<int>(4 * cpu_params.size()));
    } else {
      EXPECT_LT(elementwise_ops.load(), 20) << cpu_params.size() << " parameters";
    }
  }
  for (std::size_t i = 0; i < cpu_params.size(); ++i) {
    for (std::size_t k = 0; k < cpu_emas.size(); ++k)
      EXPECT_LT(relative_error(gpu_emas[k].params[i], cpu_emas[k].params[i]), 1e-6) << i;
    for (std::size_t k = 0; k < cpu_phema.profiles.size(); ++k)
      EXPECT_LT(relative_error(gpu_phema.profiles[k].params[i], cpu_phema.profiles[k].params[i]),
                1e-6)
          << i;
  }
  EXPECT_EQ(gpu_phema.images.item<double>(), 24.0);  // the skipped step added no images
}

// The warnings of LibTorch's sync debug mode, one per synchronising CUDA call, from any thread.
struct SyncWarnings : c10::WarningHandler {
  std::atomic<int> count{0};
  void process(const c10::Warning& w) override {
    if (w.msg().find("synchronizing CUDA operation") != std::string::npos) ++count;
  }
};

// docs/design.md, "no host synchronisation in a step", on the GPU: with LibTorch's sync debug mode
// warning at every synchronising CUDA call (.item(), copies to the host, the ops whose output size
// depends on the values), runs of 4 and 8 steps whose log lines come only at the first and last
// step synchronise equally often, in every variant of tests/train/test_no_host_sync.cpp (which
// counts the same on the CPU, where it found the importance sampler's 4 a step).
TEST_F(Cuda, StepsBetweenLogLinesNeverWaitForTheGpu) {
#if __has_include(<c10/cuda/CUDAFunctions.h>)
  const auto syncs = [&](const std::string& name, int steps,
                         const std::vector<std::string>& overrides) {
    const tr::Config c = config(name + "_" + std::to_string(steps),
                                difftrain::testing::steps_between_log_lines(overrides, steps));
    SyncWarnings seen;
    const c10::WarningUtils::WarningHandlerGuard handler(&seen);
    struct SyncDebug {  // on for this run only, also when it throws
      SyncDebug() {
        c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
      }
      ~SyncDebug() {
        c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
      }
    } on;
    train(c, kGpu);
    return seen.count.load();
  };
  for (const auto& [name, overrides] : difftrain::testing::step_variants()) {
    const int four = syncs(name, 4, overrides), eight = syncs(name, 8, overrides);
    EXPECT_EQ(eight, four) << name << ": the 4 more steps synchronised " << eight - four
                           << " times more (" << four << " in 4 steps, " << eight << " in 8)";
  }
#else
  GTEST_SKIP() << "a LibTorch without CUDA's headers";
#endif
}

// Whole runs on the GPU against the CPU end within the relative update difference of 2 ranks
// against 1 (0.05; a wrong update of every element gives about 1.4). Not elementwise: GPU and CPU
// convolutions round differently, and Adam turns the rounding noise of a gradient that is zero in
// exact arithmetic (a convolution bias before a GroupNorm) into a sizeable update of either sign.
constexpr double kGpuCpuRelative = 0.05;

// The whole trainer (loader staging, host-drawn timesteps and noise, the fused step, EMA) on the
// GPU against the CPU.
TEST_F(Cuda, TrainingRunMatchesTheCpuInFp32) {
  NoTf32 fp32;
  // With sample grids on both: drawn on the GPU with the EMA swapped in, then the weights put back.
  auto overrides = kRunOverrides;
  for (const char* grid :
       {"logging.sample_every=2", "logging.sample_num=4", "logging.sample_steps=3"})
    overrides.push_back(grid);
  const auto cpu = train(config("cpu", overrides), at::kCPU);
  const auto gpu = train(config("gpu", overrides), kGpu);
  ASSERT_EQ(gpu.step, 5);
  EXPECT_TRUE(fs::exists(dir / "gpu/samples/step_000000004.png"));
  expect_same_training(config("cpu", overrides), gpu.last_checkpoint, cpu.last_checkpoint, false,
                       kGpuCpuRelative);
}

// A checkpoint written on the GPU resumes on the CPU, and one written on the CPU on the GPU; each
// mixed run ends where a CPU-only run ends.
TEST_F(Cuda, CheckpointsResumeAcrossDevices) {
  NoTf32 fp32;
  auto overrides = kRunOverrides;
  overrides.push_back("training.max_steps=6");
  const auto cpu = train(config("cpu", overrides), at::kCPU);
  for (const auto& [first, second, run] :
       {std::tuple{kGpu, c10::Device(at::kCPU), "gpu_then_cpu"},
        std::tuple{c10::Device(at::kCPU), kGpu, "cpu_then_gpu"}}) {
    SCOPED_TRACE(run);
    auto half = overrides;
    half.push_back("training.max_steps=3");
    ASSERT_EQ(train(config(run, half), first).step, 3);
    tr::TrainOptions resume;
    resume.resume = "auto";
    const auto resumed = train(config(run, overrides), second, resume);
    ASSERT_EQ(resumed.step, 6);
    EXPECT_TRUE(
        difftrain::testing::all_finite(checkpoint_tensors(config(run), resumed.last_checkpoint)));
    expect_same_training(config("cpu", overrides), resumed.last_checkpoint, cpu.last_checkpoint,
                         false, kGpuCpuRelative);
  }
}

// bf16 and fp16 autocast on the GPU (channels-last by model.channels_last: auto): finite losses and
// weights that moved.
TEST_F(Cuda, Bf16AndFp16TrainingIsFinite) {
  for (const std::string precision : {"bf16", "fp16"}) {
    SCOPED_TRACE(precision);
    const std::string run = "run_" + precision;
    auto overrides = kRunOverrides;
    overrides.push_back("training.precision=" + precision);
    const tr::Config c = config(run, overrides);
    const auto r = train(c, kGpu);
    ASSERT_EQ(r.step, 5);
    const auto end = checkpoint_tensors(c, r.last_checkpoint);
    EXPECT_TRUE(difftrain::testing::all_finite(end));
    for (const auto& line : metrics_lines(dir / run)) {
      EXPECT_TRUE(std::isfinite(line["loss"].get<double>())) << line.dump();
      // GPU memory in every log line: some tensors were held, within what the allocator holds.
      if (rehearsal()) continue;
      ASSERT_TRUE(line.contains("device_peak_allocated_mb")) << line.dump();
      EXPECT_GT(line["device_peak_allocated_mb"].get<double>(), 0.0);
      EXPECT_LE(line["device_peak_allocated_mb"].get<double>(),
                line["device_reserved_mb"].get<double>());
    }
    // The output convolution starts at zero (zero_module): it moves only if training did.
    EXPECT_GT(end.at("model/out.2.weight").abs().max().item<double>(), 0.0);
  }
}

// fp16 with a loss scale of 2^32: the scaled gradients overflow float16 in backward (no injected
// fault). The scaler skips those steps, halving the scale each time, until the gradients fit;
// then training goes on with finite weights and no more skips.
TEST_F(Cuda, Fp16LossScalerSeesARealOverflowAndRecovers) {
  auto overrides = kRunOverrides;
  for (const char* o : {"training.precision=fp16", "training.loss_scale_init=4294967296",
                        "training.max_steps=40", "logging.log_every=8"})
    overrides.push_back(o);
  const tr::Config c = config("fp16", overrides);
  const auto r = train(c, kGpu);
  ASSERT_EQ(r.step, 40);
  const auto lines = metrics_lines(dir / "fp16");
  ASSERT_EQ(lines.size(), 5u);
  int64_t skipped = 0;
  for (const auto& line : lines)
    skipped += line.value("skipped_steps", int64_t{0});
  std::cout << "skipped " << skipped << " of 40 steps; loss scale " << lines.front()["loss_scale"]
            << " at step 8, " << lines.back()["loss_scale"] << " at step 40\n";
  EXPECT_GE(skipped, 1) << "2^32 did not overflow float16";
  EXPECT_LT(skipped, 30);
  EXPECT_EQ(lines.back().value("skipped_steps", int64_t{0}), 0) << "no recovery";
  EXPECT_LT(lines.back()["loss_scale"].get<double>(), 4294967296.0);
  EXPECT_GE(lines.back()["loss_scale"].get<double>(), 1.0);
  EXPECT_TRUE(std::isfinite(lines.back()["loss"].get<double>()));
  EXPECT_TRUE(difftrain::testing::all_finite(checkpoint_tensors(c, r.last_checkpoint)));
}

// Every timestep density on the GPU draws what it draws on the CPU from the same host generator,
// the importance sampler after the same recorded losses (its warm-up is decided on the device).
TEST_F(Cuda, TimestepSamplersDrawWhatTheCpuDraws) {
  namespace d = difftrain::diffusion;
  for (const char* name : {"uniform", "stratified", "logit_normal", "loss-second-moment"}) {
    SCOPED_TRACE(name);
    d::TimestepSamplerOptions o;
    o.kind = d::parse_timestep_sampler(name);
    d::TimestepSampler cpu = d::make_timestep_sampler(o, 50, at::kCPU);
    d::TimestepSampler gpu = d::make_timestep_sampler(o, 50, kGpu);
    auto g = tr::cpu_generator(11);
    for (int round = 0; round < 30; ++round) {
      const at::Tensor t = at::randint(50, {40}, g, at::kLong);
      const at::Tensor losses = at::rand({40}, g, at::kDouble) + t.to(at::kDouble) / 50;
      if (d::records_losses(cpu)) {
        d::record_losses(cpu, t, losses);
        d::record_losses(gpu, t.to(kGpu), losses.to(kGpu));
      }
    }
    const d::TimestepDraw want = d::draw_timesteps(cpu, 64, tr::cpu_generator(5));
    const d::TimestepDraw got = d::draw_timesteps(gpu, 64, tr::cpu_generator(5));
    ASSERT_EQ(got.t.device(), kGpu);
    EXPECT_TRUE(at::equal(got.t.cpu(), want.t));
    EXPECT_LT(relative_error(got.weights, want.weights), 1e-12);
  }
}

// The held-out bits/dim estimate on the GPU against the CPU: same batch, timesteps and noise.
TEST_F(Cuda, HeldOutBitsPerDimMatchesTheCpu) {
  NoTf32 fp32;
  const tr::Config c = config(
      "bpd", {"data.validation=" + manifest, "logging.bpd_batch=6", "logging.bpd_timesteps=10"});
  const auto data = difftrain::data::read_manifest(c.data.train);
  const auto shape = tr::data_shape(c, &data);
  auto comm = difftrain::parallel::make_local_communicator();
  std::vector<double> bpd;
  for (const c10::Device& device : {c10::Device(at::kCPU), kGpu}) {
    torch::manual_seed(c.seed);
    difftrain::model::UNet net(tr::unet_config(c, shape));
    net->to(device);
    const auto batch = tr::read_heldout_batch(c, shape, 0, 1, device);
    EXPECT_EQ(batch.images.device(), device);
    bpd.push_back(
        tr::estimate_heldout_bpd(tr::make_denoiser(net, c),
                                 difftrain::diffusion::to_device(tr::make_diffusion(c), device), c,
                                 batch, *comm)
            .bpd);
  }
  EXPECT_GT(bpd[0], 1.0);
  EXPECT_NEAR(bpd[1], bpd[0], 1e-4 * bpd[0]);
}

// The loader's pinned staging and non-blocking copies deliver, on the GPU, the batches the CPU
// loader delivers: same images bit for bit (padding and flips included), labels and indices.
TEST_F(Cuda, LoaderDeliversTheCpuBatchesToTheGpu) {
  const auto options = [&](const c10::Device& device) {
    difftrain::data::LoaderOptions o;
    o.manifest = manifest;
    o.global_batch = 8;
    o.seed = 3;
    o.random_flip = true;
    o.labels = true;
    o.pad_to = 16;
    o.device = device;
    return o;
  };
  difftrain::data::Loader cpu(options(at::kCPU)), gpu(options(kGpu));
  for (int i = 0; i < 2 * cpu.batches_per_epoch() + 1; ++i) {  // across two epoch boundaries
    const auto want = cpu.next();
    const auto got = gpu.next();
    ASSERT_EQ(got.images.device(), kGpu);
    ASSERT_EQ(got.labels.device(), kGpu);
    EXPECT_TRUE(at::equal(got.images.cpu(), want.images)) << "batch " << i;
    EXPECT_TRUE(at::equal(got.labels.cpu(), want.labels)) << "batch " << i;
    EXPECT_TRUE(at::equal(got.indices, want.indices)) << "batch " << i;
  }
}

// torch::manual_seed seeds the CUDA generator too: the trainer's per-step dropout seed gives the
// same masks again on the GPU, and another seed other masks.
TEST_F(Cuda, DropoutOnTheGpuFollowsManualSeed) {
  auto net = perturbed_unet(config("unused", {"model.dropout=0.3"}), kGpu, 0.05);
  net->train();
  const at::Tensor x = at::randn({4, 1, 16, 16}, tr::cpu_generator(1)).to(kGpu);
  const at::Tensor t = at::full({4}, 500.0, at::TensorOptions(kGpu));
  const auto forward = [&](uint64_t seed) {
    torch::manual_seed(seed);
    torch::NoGradGuard no_grad;
    return net->forward(x, t, {});
  };
  EXPECT_TRUE(at::equal(forward(5), forward(5)));
  EXPECT_FALSE(at::equal(forward(5), forward(6)));
}

// Gradient checkpointing on the GPU, where dropout draws from the CUDA generator: with dropout 0.3,
// in fp32 and bf16, the checkpointed model's gradients are the plain model's, for a lower peak of
// device memory.
TEST_F(Cuda, GradientCheckpointingGivesTheSameGradientsForLessMemory) {
  NoTf32 fp32;
  const auto net = [&](bool use_checkpoint) {
    auto n = perturbed_unet(config("unused", {"model.dropout=0.3", "model.num_res_blocks=2",
                                              std::string("model.use_checkpoint=") +
                                                  (use_checkpoint ? "true" : "false")}),
                            kGpu, 0.01);
    n->train();
    return n;
  };
  auto plain = net(false), checkpointed = net(true);
  at::globalContext().setDeterministicCuDNN(true);  // the same convolution algorithms both times
  const at::Tensor x = at::randn({64, 1, 16, 16}, tr::cpu_generator(1)).to(kGpu);
  const at::Tensor t = at::randint(0, 1000, {64}, tr::cpu_generator(2)).to(kGpu);
  for (const bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "fp32");
    const auto grads = [&](difftrain::model::UNet& n, double& peak_mb) {
      n->zero_grad();
      tr::device_memory_and_reset_peak(kGpu);
      torch::manual_seed(5);
      {
        difftrain::AutocastScope autocast(kGpu.type(), bf16, at::kBFloat16);
        n->forward(x, t, {}).to(at::kFloat).square().mean().backward();
      }
      const auto memory = tr::device_memory_and_reset_peak(kGpu);  // none on the CPU
      peak_mb = memory ? memory->peak_allocated_mb : 0.0;
      std::vector<at::Tensor> g;
      for (const auto& p : n->parameters())
        g.push_back(p.grad().cpu());
      return g;
    };
    double plain_mb = 0, checkpointed_mb = 0;
    const auto a = grads(plain, plain_mb), b = grads(checkpointed, checkpointed_mb);
    std::cout << "peak device memory: " << plain_mb << " MiB plain, " << checkpointed_mb
              << " MiB checkpointed\n";
    const double worst = relative_gradient_error(b, a);
    std::cout << "largest relative gradient difference: " << worst << "\n";
    // A dropout mask drawn anew is off by about 1. (That the recomputation runs under the
    // forward's autocast is checked bit for bit on the CPU; here bf16 leaves room for the
    // nondeterministic reductions of attention's backward.)
    EXPECT_LT(worst, bf16 ? 2e-2 : 1e-4);
    if (!rehearsal()) {
      EXPECT_LT(checkpointed_mb, 0.8 * plain_mb);
    }
  }
  at::globalContext().setDeterministicCuDNN(false);
}

// model.fused_group_norm's kernels against GroupNorm, scale-shift and SiLU under autograd in
// float64 on the CPU, from the same inputs (x and the output's gradient rounded to the dtype under
// test first): the output and the gradients of x, weight, bias, scale and shift, in NCHW and
// NHWC, fp32, bf16 and fp16, at the CIFAR-10 model's sizes and at odd ones (1, 3 and 16 channels a
// group, 5 x 7 and 1 x 1 positions). fp32 within 1e-5 of the largest magnitude (1e-4 for the
// gradients, float sums over a group); bf16 and fp16 the output and dx within 1e-2 (one rounding
// to the dtype), the parameters' gradients within 1e-3. Then the UNet with fused norms on the GPU
// against the default UNet on the CPU, fp32, TF32 off: gradients within 1e-4.
TEST_F(Cuda, FusedGroupNormKernelsMatchTheReference) {
  struct Case {
    int64_t n, c, h, w;
    bool channels_last, silu, scale_shift;
  };
  const std::vector<Case> cases{
      {16, 128, 32, 32, true, true, true}, {16, 128, 32, 32, false, true, true},
      {8, 256, 8, 8, true, false, false},  {3, 96, 5, 7, true, true, false},
      {3, 96, 5, 7, false, true, true},    {2, 32, 6, 6, true, true, true},
      {2, 512, 4, 4, false, true, true},   {4, 512, 1, 1, true, true, true}};
  const std::vector<std::string> what{"y", "dx", "dweight", "dbias", "dscale", "dshift"};
  for (const auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const Case& k : cases) {
      const std::string name = std::string(c10::toString(dtype)) + " " + std::to_string(k.n) + "x" +
                               std::to_string(k.c) + "x" + std::to_string(k.h) + "x" +
                               std::to_string(k.w) + (k.channels_last ? " NHWC" : " NCHW") +
                               (k.silu ? " silu" : "") + (k.scale_shift ? " scale-shift" : "");
      SCOPED_TRACE(name);
      auto g = tr::cpu_generator(k.c + k.h);
      const auto x0 = (at::randn({k.n, k.c, k.h, k.w}, g) * 3 + 0.5).to(dtype);
      const auto probe0 = at::randn({k.n, k.c, k.h, k.w}, g).to(dtype);
      const auto weight0 = 1 + 0.3 * at::randn({k.c}, g), bias0 = 0.2 * at::randn({k.c}, g);
      const auto scale0 = 0.4 * at::randn({k.n, k.c, 1, 1}, g);
      const auto shift0 = 0.4 * at::randn({k.n, k.c, 1, 1}, g);
      // y and the gradients of sum(y * probe), on `device` in `type` (parameters in float32).
      const auto run = [&](const c10::Device& device, at::ScalarType type, bool fused) {
        auto x = x0.to(device, type);
        if (k.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
        x.requires_grad_(true);
        const auto param_type = type == at::kDouble ? at::kDouble : at::kFloat;
        std::vector<at::Tensor> leaves{x};
        for (const auto& p : {weight0, bias0, scale0, shift0})
          leaves.push_back(p.to(device, param_type).requires_grad_(true));
        const auto &weight = leaves[1], &bias = leaves[2], &scale = leaves[3], &shift = leaves[4];
        at::Tensor y;
        if (fused) {
          if (!rehearsal()) {
            EXPECT_TRUE(difftrain::model::fused_group_norm_uses_kernels(x, 32));
          }
          const auto s = 1 + scale.flatten(1);
          y = k.scale_shift ? difftrain::model::fused_group_norm(
                                  x, weight * s, bias * s + shift.flatten(1), 32, 1e-5, k.silu)
                            : difftrain::model::fused_group_norm(x, weight, bias, 32, 1e-5, k.silu);
          if (k.channels_last && k.h * k.w > 1) {
            EXPECT_TRUE(y.is_contiguous(at::MemoryFormat::ChannelsLast));
          }
        } else {
          y = at::group_norm(x, 32, weight, bias, 1e-5);
          if (k.scale_shift) y = y * (1 + scale) + shift;
          if (k.silu) y = at::silu(y);
        }
        const auto grads =
            torch::autograd::grad({(y * probe0.to(device, type)).sum()}, leaves, {}, false, false,
                                  /*allow_unused=*/true);
        std::vector<at::Tensor> out{y.detach().to(at::kCPU, at::kDouble)};
        for (const auto& d : grads)
          out.push_back(d.defined() ? d.to(at::kCPU, at::kDouble) : at::zeros({1}, at::kDouble));
        return out;
      };
      const auto want = run(at::kCPU, at::kDouble, false);
      const auto got = run(kGpu, dtype, true);
      const bool fp32 = dtype == at::kFloat;
      for (std::size_t i = 0; i < want.size(); ++i) {
        const double tolerance = fp32 ? (i == 0 ? 1e-5 : 1e-4) : (i <= 1 ? 1e-2 : 1e-3);
        EXPECT_LT(relative_error(got[i], want[i]), tolerance) << what[i];
      }
    }
  }

  NoTf32 fp32;
  tr::Config c = config("unused", {"model.num_res_blocks=2"});
  const at::Tensor x = at::randn({16, 1, 16, 16}, tr::cpu_generator(1));
  const at::Tensor t = at::randint(0, 1000, {16}, tr::cpu_generator(2));
  const auto grads = [&](const c10::Device& device, bool fused) {
    auto net = perturbed_unet(c, device, 0.01);
    net->eval();  // dropout off
    difftrain::model::use_fused_group_norm(*net, fused);
    net->forward(x.to(device), t.to(device), {}).square().mean().backward();
    std::vector<at::Tensor> g;
    for (const auto& p : net->parameters())
      g.push_back(p.grad().cpu());
    return g;
  };
  const double worst = relative_gradient_error(grads(kGpu, true), grads(at::kCPU, false));
  std::cout << "UNet with fused norms on the GPU against the CPU: largest relative gradient "
               "difference "
            << worst << "\n";
  EXPECT_LT(worst, 1e-4);
}

// `difftrain sample` (DDIM, DPM-Solver++ and DDPM) and `difftrain eval` with --device cuda against
// --device cpu on the same checkpoint, with TF32 off: images within 2 of 255 levels, bits/dim
// within 1e-4.
TEST_F(Cuda, SampleAndEvalOnTheGpuMatchTheCpu) {
  const std::string train_set = difftrain::testing::write_tiny_set(dir / "tiny", 8, 6, 6, 1, 0);
  const std::string heldout = difftrain::testing::write_tiny_set(dir / "heldout", 5, 6, 6, 1, 0, 2);
  const std::string checkpoint = dir / "tiny.pt";
  const std::string yaml = difftrain::testing::tiny_config_yaml(train_set);
  difftrain::testing::write_tiny_checkpoint(checkpoint, yaml, yaml);
  const auto cli = [&](const std::string& args) {
    const auto r = difftrain::testing::run(difftrain::testing::kNoTf32Env + "OMP_NUM_THREADS=2 " +
                                           DIFFTRAIN_BINARY + " " + args);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r;
  };
  for (const char* sampler : {"ddim --steps 5", "dpm++2m --steps 6", "ddpm"}) {
    SCOPED_TRACE(sampler);
    EXPECT_LE(sampled_pixels_apart(
                  "--checkpoint " + checkpoint + " --num 4 --batch 4 --seed 2 --sampler " + sampler,
                  dir / "samples"),
              2);
  }
  std::vector<double> bpd;
  for (const auto& [device, side] : {std::pair{std::string("cpu"), "cpu"}, {kGpuFlag, "gpu"}}) {
    const std::string out = dir / (std::string(side) + "_bpd");
    cli("eval --checkpoint " + checkpoint + " --data " + heldout + " --device " + device +
        " --out " + out);
    std::ifstream f(out + ".json");
    bpd.push_back(nlohmann::json::parse(f)["total_bpd"].get<double>());
  }
  EXPECT_GT(bpd[0], 1.0);
  EXPECT_NEAR(bpd[1], bpd[0], 1e-4 * bpd[0]);
}

// `difftrain fid` with --device cuda (TF32 off), alone and on 2 ranks over NCCL (the float64
// sums all-reduced, the features all-gathered), against --device cpu: the same FID to 1e-4, the
// same sFID to 1e-3 (its 2023 features sum to covariances of rank 8 and 6), the same Inception
// Score (ln IS to 1e-3) and precision and recall within one image (a query near a ball's edge may
// turn), on random Inception weights (BatchNorm statistics included) and two sets of 9 and 7 images
// of 14 x 14, upsampled to 299.
TEST_F(Cuda, FidOnTheGpuMatchesTheCpu) {
  const std::string weights = dir / "inception.pt";
  {
    torch::manual_seed(0);
    difftrain::quality::FidInception net;
    torch::NoGradGuard no_grad;
    for (const auto& p : net->named_parameters()) {
      if (p.key().ends_with("conv.weight"))
        p.value().normal_(0, std::sqrt(2.0 / static_cast<double>(p.value()[0].numel())));
      else if (p.key().ends_with("bn.weight"))
        p.value().uniform_(0.5, 1.5);
      else if (p.key() == "fc.weight")
        p.value().normal_(0, 0.05);  // logits of a few units: p(y|x) neither uniform nor one-hot
      else
        p.value().normal_(0, 0.2);
    }
    for (const auto& b : net->named_buffers())
      b.key().ends_with("running_var") ? b.value().uniform_(0.5, 2.0) : b.value().normal_(0, 0.2);
    difftrain::weights::save_pt(difftrain::weights::state_dict_of(*net), weights);
  }
  // Two small sets (the CPU's part is the slow one: 5.7 G multiply-adds per image at 299 x 299).
  const std::string first =
      difftrain::testing::write_synthetic_set(dir / "first", {9}, 14, 14, 1, 10).manifest;
  const std::string other = difftrain::testing::write_synthetic_set(
                                dir / "other", {7}, 14, 14, 1, 10,
                                [](int64_t i, int64_t y, int64_t x, int64_t) {
                                  return static_cast<uint8_t>((i * 53 + y * 7 + x * 13) % 256);
                                })
                                .manifest;
  const std::string args = " fid " + first + " " + other + " --inception " + weights +
                           " --batch 16 --is-splits 3 --out ";
  const auto fid = [&](const std::string& launch, const std::string& device) {
    const std::string out = dir / ("fid_" + device + ".json");
    const auto r = difftrain::testing::run(launch + std::string(DIFFTRAIN_BINARY) + args + out +
                                           " --device " + device);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::ifstream f(out);
    return nlohmann::json::parse(f);
  };
  const auto log_is = [](const nlohmann::json& report) {
    return std::log(report["sets"][0]["inception_score"]["mean"].get<double>());
  };
  const auto expect_precision_recall_near = [](const nlohmann::json& got,
                                               const nlohmann::json& want) {
    ASSERT_TRUE(got.contains("precision_recall")) << got.dump();
    EXPECT_NEAR(got["precision_recall"]["precision"].get<double>(),
                want["precision_recall"]["precision"].get<double>(), 1.0 / 9 + 1e-9);
    EXPECT_NEAR(got["precision_recall"]["recall"].get<double>(),
                want["precision_recall"]["recall"].get<double>(), 1.0 / 7 + 1e-9);
  };
  const std::string alone = difftrain::testing::kNoTf32Env + "OMP_NUM_THREADS=2 ";
  const nlohmann::json cpu = fid(alone, "cpu");
  const double cpu_fid = cpu["fid"].get<double>();
  EXPECT_GT(cpu_fid, 1.0);
  EXPECT_GT(log_is(cpu), 1e-3);
  const nlohmann::json gpu = fid(alone, kGpuFlag);
  EXPECT_NEAR(gpu["fid"].get<double>(), cpu_fid, 1e-4 * cpu_fid);
  const double cpu_sfid = cpu["sfid"].get<double>();
  EXPECT_GT(cpu_sfid, 1.0);
  EXPECT_NEAR(gpu["sfid"].get<double>(), cpu_sfid, 1e-3 * cpu_sfid);
  EXPECT_NEAR(log_is(gpu), log_is(cpu), 1e-3 * log_is(cpu));
  expect_precision_recall_near(gpu, cpu);
  const auto two = difftrain::testing::run(difftrain::testing::mpirun_on_one_gpu(
      2, std::string(DIFFTRAIN_BINARY) + args + std::string(dir / "fid_two.json") + " --device " +
             kGpuFlag));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  std::ifstream f(dir / "fid_two.json");
  const nlohmann::json report = nlohmann::json::parse(f);
  EXPECT_EQ(report["ranks"], 2);
  EXPECT_NEAR(report["fid"].get<double>(), cpu_fid, 1e-4 * cpu_fid);
  EXPECT_NEAR(report["sfid"].get<double>(), cpu_sfid, 1e-3 * cpu_sfid);
  EXPECT_NEAR(log_is(report), log_is(cpu), 1e-3 * log_is(cpu));
  expect_precision_recall_near(report, cpu);
}

// training.tf32 reaches cuDNN and cuBLAS: with false, a convolution and a matmul on the GPU give
// the CPU's fp32 results to 1e-5 even where TF32 was allowed before; with true, both round their
// inputs to TF32's 10-bit mantissa and are off by more than 1e-4 (about 1e-3 on these sums of
// 576 and 512 products).
TEST_F(Cuda, Tf32SettingReachesConvolutionsAndMatmuls) {
  if (rehearsal()) GTEST_SKIP() << "TF32 exists only on a GPU";
  NoTf32 restore;  // puts the flags back afterwards
  auto g = tr::cpu_generator(11);
  const at::Tensor x = at::randn({4, 64, 16, 16}, g), w = at::randn({64, 64, 3, 3}, g),
                   a = at::randn({256, 512}, g), b = at::randn({512, 256}, g);
  const at::Tensor conv_cpu = at::conv2d(x, w, {}, 1, 1), mm_cpu = at::matmul(a, b);
  const auto errors = [&] {
    return std::pair{relative_error(at::conv2d(x.to(kGpu), w.to(kGpu), {}, 1, 1), conv_cpu),
                     relative_error(at::matmul(a.to(kGpu), b.to(kGpu)), mm_cpu)};
  };
  at::globalContext().setAllowTF32CuDNN(true);
  at::globalContext().setAllowTF32CuBLAS(true);
  tr::apply_process_settings(config("tf32_false", {"training.tf32=false"}));
  const auto [conv_exact, mm_exact] = errors();
  EXPECT_LT(conv_exact, 1e-5);
  EXPECT_LT(mm_exact, 1e-5);
  tr::apply_process_settings(config("tf32_true", {"training.tf32=true"}));
  const auto [conv_tf32, mm_tf32] = errors();
  EXPECT_GT(conv_tf32, 1e-4);
  EXPECT_GT(mm_tf32, 1e-4);
}

// The noisy classifier trained on the GPU ends where the CPU's ends (the relative update difference
// of whole runs), bf16 on the GPU is finite, and classifier guidance (a gradient through the
// classifier inside the sampler's inference mode, on the device) gives the CPU's images.
TEST_F(Cuda, ClassifierTrainingAndGuidanceOnTheGpuMatchTheCpu) {
  NoTf32 fp32;
  const auto classifier = [&](const std::string& run, const c10::Device& device,
                              const std::string& precision = "fp32") {
    const tr::Config c =
        tr::parse_config(difftrain::testing::tiny_classifier_config(manifest, manifest, dir / run),
                         {"training.max_steps=5", "training.batch_size=12", "training.lr=0.0001",
                          "training.precision=" + precision});
    auto comm = difftrain::parallel::make_local_communicator();
    tr::Cluster cluster{*comm, nullptr, {}, device};
    const tr::TrainResult r = tr::train_classifier(c, cluster, "");
    EXPECT_EQ(r.step, 5);
    return std::pair{c, difftrain::testing::classifier_checkpoint(c, r.last_checkpoint)};
  };
  const auto [c, cpu] = classifier("classifier_cpu", at::kCPU);
  const auto gpu = classifier("classifier_gpu", kGpu).second;
  const auto bf16 = classifier("classifier_bf16", kGpu, "bf16").second;
  const auto manifest_data = difftrain::data::read_manifest(manifest);
  auto comm = difftrain::parallel::make_local_communicator();
  const tr::ClassifierState initial =
      tr::make_classifier_state(c, tr::data_shape(c, &manifest_data), at::kCPU, *comm);
  double apart = 0, moved = 0;
  for (const auto& p : initial.net->named_parameters()) {
    const at::Tensor& end = cpu.at("model/" + p.key());
    apart += (gpu.at("model/" + p.key()) - end).square().sum().item<double>();
    moved += (end - p.value()).square().sum().item<double>();
    EXPECT_TRUE(at::isfinite(bf16.at("model/" + p.key())).all().item<bool>()) << p.key();
  }
  EXPECT_LT(std::sqrt(apart / moved), kGpuCpuRelative);

  const std::string labelled = difftrain::testing::write_tiny_set(dir / "labelled", 8, 6, 6, 1, 3);
  const std::string train_set = difftrain::testing::write_tiny_set(dir / "tiny", 8, 6, 6, 1, 0);
  const std::string model = dir / "tiny.pt", guide = dir / "classifier.pt";
  const std::string yaml = difftrain::testing::tiny_config_yaml(train_set);
  difftrain::testing::write_tiny_checkpoint(model, yaml, yaml);
  difftrain::testing::write_tiny_classifier(guide, labelled);
  for (const char* sampler : {"ddim --steps 5", "dpm++2m --steps 6", "ddpm"}) {
    SCOPED_TRACE(sampler);
    EXPECT_LE(
        sampled_pixels_apart("--checkpoint " + model + " --classifier " + guide +
                                 " --classifier-scale 20 --num 4 --seed 2 --sampler " + sampler,
                             dir / "guided"),
        2);
  }
}

// Classifier-free guidance on the GPU: the label dropout (drawn on the host, staged to the device)
// trains as on the CPU, and guided DDIM sampling (the doubled batch) gives the CPU's images.
TEST_F(Cuda, ClassifierFreeGuidanceOnTheGpuMatchesTheCpu) {
  NoTf32 fp32;
  auto overrides = kRunOverrides;
  overrides.push_back("data.class_conditional=true");
  overrides.push_back("training.p_uncond=0.3");
  const auto cpu = train(config("cfg_cpu", overrides), at::kCPU);
  const auto gpu = train(config("cfg_gpu", overrides), kGpu);
  expect_same_training(config("cfg_cpu", overrides), gpu.last_checkpoint, cpu.last_checkpoint,
                       false, kGpuCpuRelative);
  EXPECT_LE(
      sampled_pixels_apart("--checkpoint " + gpu.last_checkpoint +
                               " --num 4 --sampler ddim --steps 5 --seed 2 --guidance-scale 3",
                           dir / "guided"),
      2);
}

// An upsampler (model.low_res_size 7 of the 14x14 images, with `extra` overrides): its training,
// with held-out bits/dim and a grid from held-out images, on the GPU against the CPU;
// `sample --low-res SAMPLE_ARGS` of the training images (area-downsampled as in training) within 2
// levels of 255; in bf16 its run is finite.
void expect_upsampler_on_the_gpu_as_on_the_cpu(Cuda& f, const std::string& run,
                                               const std::vector<std::string>& extra,
                                               const std::string& sample_args) {
  NoTf32 fp32;
  auto overrides = kRunOverrides;
  for (const std::string o :
       {"data.pad_to=0", "model.attention_resolutions=[7]", "model.low_res_size=7",
        "logging.bpd_every=5", "logging.bpd_batch=8", "logging.sample_every=5",
        "logging.sample_num=4", "logging.sample_steps=3"})
    overrides.push_back(o);
  overrides.push_back("data.validation=" + f.manifest);
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  const auto cpu = f.train(f.config(run + "_cpu", overrides), at::kCPU);
  const auto gpu = f.train(f.config(run + "_gpu", overrides), kGpu);
  ASSERT_EQ(gpu.step, 5);
  EXPECT_TRUE(fs::exists(fs::path(f.dir / (run + "_gpu")) / "samples/step_000000005.png"));
  expect_same_training(f.config(run + "_cpu", overrides), gpu.last_checkpoint, cpu.last_checkpoint,
                       false, kGpuCpuRelative);
  EXPECT_LE(
      sampled_pixels_apart("--checkpoint " + gpu.last_checkpoint + " --low-res " + f.manifest +
                               " --num 4 --sampler dpm++2m --steps 5 --seed 2" + sample_args,
                           f.dir / (run + "_upsampled")),
      2);
  auto bf16 = overrides;
  bf16.push_back("training.precision=bf16");
  const auto r = f.train(f.config(run + "_bf16", bf16), kGpu);
  for (const auto& line : metrics_lines(f.dir / (run + "_bf16")))
    EXPECT_TRUE(std::isfinite(line["loss"].get<double>())) << line;
  EXPECT_EQ(r.step, 5);
}

TEST_F(Cuda, AnUpsamplerTrainsAndSamplesOnTheGpuAsOnTheCpu) {
  expect_upsampler_on_the_gpu_as_on_the_cpu(*this, "up", {}, "");
}
// Noise conditioning augmentation: each row's level and noise are drawn on the host and staged to
// the device, and `sample --low-res-noise` noises the low-res images from its own stream.
TEST_F(Cuda, ANoiseConditionedUpsamplerTrainsAndSamplesOnTheGpuAsOnTheCpu) {
  expect_upsampler_on_the_gpu_as_on_the_cpu(
      *this, "noised", {"model.low_res_noise=true", "training.low_res_noise_max=0.5"},
      " --low-res-noise 0.25");
}

// `mpirun -np 2 difftrain train` with both ranks on GPU 0 (NCCL, the bucketed reducer) against one
// rank on the GPU: the tolerance of tests/train/test_trainer.cpp's W ranks against 1 rank.
void expect_two_ranks_match_one(Cuda& f, const std::string& run,
                                const std::vector<std::string>& extra, bool elementwise) {
  NoTf32 fp32;
  auto overrides = kRunOverrides;
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  // cuDNN's heuristics: in benchmark mode each process times the algorithms for itself (here with
  // two ranks sharing the GPU), and another algorithm rounds otherwise; the comparison is of the
  // reducer, not of cuDNN's choices.
  overrides.push_back("training.cudnn_benchmark=false");
  const auto one = f.train(f.config(run + "_one", overrides), kGpu);
  const std::string yaml = f.dir / (run + ".yaml");
  std::ofstream(yaml) << difftrain::testing::tiny_config(f.manifest, f.dir / run);
  std::string command =
      std::string(DIFFTRAIN_BINARY) + " train --config " + yaml + " --set device=" + kGpuFlag;
  for (const auto& o : overrides)
    command += " --set " + o;
  const auto r = difftrain::testing::run(difftrain::testing::mpirun_on_one_gpu(2, command));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("2 ranks, device " + kGpuFlag), std::string::npos) << r.output;
  expect_same_training(f.config(run + "_one", overrides), tr::checkpoint_path(f.dir / run, 5),
                       one.last_checkpoint, elementwise);
}

TEST_F(Cuda, TwoRanksOnNcclMatchOneRank) {
  expect_two_ranks_match_one(*this, "fp32", {}, true);
}
TEST_F(Cuda, TwoRanksOnNcclChannelsLastMatchOneRank) {
  expect_two_ranks_match_one(*this, "channels_last", {"model.channels_last=true"}, true);
}
TEST_F(Cuda, TwoRanksOnNcclBf16MatchOneRank) {
  expect_two_ranks_match_one(*this, "bf16", {"training.precision=bf16"}, false);
}

// A rank that stops answering at step 4: the other rank's NCCL all-reduce never completes, the
// watchdog names it, aborts the communicator and ends the job well within a minute.
TEST_F(Cuda, HungRankOnNcclIsNamedByTheWatchdog) {
  const std::string yaml = dir / "hung.yaml";
  std::ofstream(yaml) << difftrain::testing::tiny_config(manifest, dir / "hung");
  std::string command = std::string(DIFFTRAIN_BINARY) + " train --config " + yaml +
                        " --set device=" + kGpuFlag +
                        " --set training.watchdog_timeout=3"
                        " --fault hang@4 --fault-rank 1";
  for (const auto& o : kRunOverrides)
    command += " --set " + o;
  const auto start = std::chrono::steady_clock::now();
  const auto r = difftrain::testing::run(difftrain::testing::mpirun_on_one_gpu(2, command));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "timed out: the job did not end by itself\n" << r.output;
  EXPECT_LT(seconds, 60) << r.output;
  EXPECT_NE(r.output.find("watchdog: all_reduce"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("at step 4 has not completed"), std::string::npos) << r.output;
}

}  // namespace
