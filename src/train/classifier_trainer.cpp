#include "train/classifier_trainer.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/autocast_scope.hpp"
#include "data/loader.hpp"
#include "data/manifest.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "model/parameter_count.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_reducer.hpp"
#include "parallel/watchdog.hpp"
#include "train/checkpoint.hpp"
#include "train/classifier.hpp"
#include "train/data_wait.hpp"
#include "train/heldout_bpd.hpp"
#include "train/metrics.hpp"
#include "train/step_rng.hpp"
#include "train/stop_rule.hpp"
#include "train/train_step.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace difftrain::train {
namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Sums over samples since the last reset, on the device: [loss, correct, count] overall, then
// [correct, count] for each quarter of [0, T) (q0: the least noise).
struct Tally {
  at::Tensor sums;  // float64 [3 + 2 * 4]
  int64_t num_timesteps;

  Tally(const c10::Device& device, int64_t T)
      : sums(at::zeros({11}, at::TensorOptions(device).dtype(at::kDouble))), num_timesteps(T) {}

  void add(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& t,
           const at::Tensor& loss) {
    const at::Tensor correct = logits.argmax(1).eq(labels).to(at::kDouble);
    const at::Tensor quarter = (t * 4).div(num_timesteps, "floor").clamp(0, 3);
    const at::Tensor ones = at::ones_like(correct);
    sums.narrow(0, 0, 3).add_(at::stack({loss.to(at::kDouble).sum(), correct.sum(), ones.sum()}));
    sums.narrow(0, 3, 4).index_add_(0, quarter, correct);
    sums.narrow(0, 7, 4).index_add_(0, quarter, ones);
  }

  // Reduced over ranks, then reset: {prefix}loss, {prefix}accuracy, {prefix}accuracy_q0..q3.
  nlohmann::json reduce_and_reset(parallel::Communicator& comm, const std::string& prefix) {
    comm.all_reduce(sums, parallel::ReduceOp::sum);
    const at::Tensor s = sums.to(at::kCPU, at::kDouble, /*non_blocking=*/false, /*copy=*/true);
    sums.zero_();
    const auto v = s.accessor<double, 1>();
    nlohmann::json out;
    out[prefix + "loss"] = v[0] / v[2];
    out[prefix + "accuracy"] = v[1] / v[2];
    for (int q = 0; q < 4; ++q)
      out[fmt::format("{}accuracy_q{}", prefix, q)] = v[7 + q] > 0 ? v[3 + q] / v[7 + q] : 0.0;
    return out;
  }
};

// The step: cross-entropy of the labels given x_t, microbatch by microbatch, the gradients
// averaged over ranks in buckets while backward runs, then the AdamW update, skipped on the device
// when the gradients are not finite. Returns the global gradient norm (before clipping).
at::Tensor classifier_step(ClassifierState& s, const Classifier& classifier,
                           const diffusion::GaussianDiffusion& d, const TrainingConfig& tc,
                           parallel::GradReducer& reducer, const StepInputs& in, Tally& tally) {
  reducer.zero_grad();
  const int64_t b = in.x_start.size(0);
  const int64_t micro = tc.microbatch > 0 ? tc.microbatch : b;
  for (int64_t m0 = 0; m0 < b; m0 += micro) {
    reducer.set_sync(m0 + micro >= b);
    const at::Tensor t = in.t.narrow(0, m0, micro), y = in.labels.narrow(0, m0, micro);
    const at::Tensor x_t =
        diffusion::q_sample(d, in.x_start.narrow(0, m0, micro), t, in.noise.narrow(0, m0, micro));
    at::Tensor logits;
    {
      AutocastScope autocast(x_t.device().type(), tc.precision == Precision::bf16, at::kBFloat16);
      logits = classifier.logits(x_t, t);
    }
    const at::Tensor loss = at::cross_entropy_loss(logits.to(at::kFloat), y,
                                                   /*weight=*/{}, at::Reduction::None);
    (loss.sum() / static_cast<double>(b)).backward();
    tally.add(logits.detach(), y, t, loss.detach());
  }
  reducer.finish();

  const std::vector<at::Tensor> params = s.net->parameters();
  const std::vector<at::Tensor> grads = grads_of(params);
  const at::Tensor grad_norm = global_grad_norm(grads, in.x_start.device());
  const at::Tensor skip = at::isfinite(grad_norm).logical_not().to(at::kFloat);
  if (tc.grad_clip > 0)
    at::_foreach_mul_(grads, (tc.grad_clip / (grad_norm + 1e-6)).clamp_max(1.0));
  adamw_step(s.optimizer, learning_rate(tc, s.step), skip);
  ++s.step;
  return grad_norm;
}

// Held-out loss and accuracy: this rank's rows of the fixed batch, each at its own timestep, the
// timesteps and noise drawn from the seed alone (every estimate sees the same x_t).
nlohmann::json evaluate_heldout(Classifier& classifier, const diffusion::GaussianDiffusion& d,
                                const Config& config, const HeldOutBatch& batch,
                                parallel::Communicator& comm) {
  torch::NoGradGuard no_grad;
  const bool was_training = classifier.net->is_training();
  classifier.net->eval();
  const int64_t b = batch.images.size(0), T = d.num_timesteps;
  // Streams of their own (extra 2 and 3): not the held-out bits/dim estimate's numbers.
  const at::Tensor t_all =
      at::randint(T, {batch.global_size},
                  cpu_generator(step_seed(config.seed, 0, RngStream::evaluation, 3)), at::kLong);
  const at::Tensor t = t_all.narrow(0, batch.row_offset, b).to(batch.images.device());
  at::Tensor noise = at::empty(batch.images.sizes(), at::kFloat);
  for (int64_t i = 0; i < b; ++i)
    noise[i].normal_(
        0.0, 1.0,
        cpu_generator(step_seed(config.seed, batch.row_offset + i, RngStream::evaluation, 2)));
  noise = noise.to(batch.images.device());
  const at::Tensor logits = classifier.logits(diffusion::q_sample(d, batch.images, t, noise), t);
  Tally tally(batch.images.device(), T);
  tally.add(logits, batch.labels, t,
            at::cross_entropy_loss(logits.to(at::kFloat), batch.labels, {}, at::Reduction::None));
  classifier.net->train(was_training);
  return tally.reduce_and_reset(comm, "heldout_");
}

}  // namespace

void validate_for_classifier(const Config& c) {
  if (!c.data.class_conditional)
    throw ConfigError(
        "config key 'data.class_conditional' must be true for a classifier: it trains on the "
        "shards' labels");
  if (c.model.low_res_size != 0)
    throw ConfigError(
        "config key 'model.low_res_size' must be 0 for a classifier: it is not an upsampler");
  if (c.training.precision == Precision::fp16)
    throw ConfigError(
        "config key 'training.precision' = fp16: a classifier trains in fp32 or bf16 (no loss "
        "scaling)");
  if (c.diffusion.timestep_sampler != diffusion::TimestepSamplerKind::uniform)
    throw ConfigError("config key 'diffusion.timestep_sampler' = " +
                      diffusion::to_string(c.diffusion.timestep_sampler) +
                      ": a classifier trains on uniform timesteps (the sampler's weights are for "
                      "the diffusion loss)");
  if (c.logging.bpd_every > 0 && c.data.validation.empty())
    throw ConfigError(
        "config key 'logging.bpd_every' is set but 'data.validation' is empty: held-out accuracy "
        "needs held-out images");
}

TrainResult train_classifier(const Config& config, Cluster& cluster, const std::string& resume) {
  parallel::Communicator& comm = cluster.comm;
  const int rank = comm.rank(), world = comm.size();
  const c10::Device device = cluster.device;
  const TrainingConfig& tc = config.training;
  const LoggingConfig& lc = config.logging;
  validate(config);
  validate_for_world(config, world);
  validate_for_classifier(config);
  check_paths(config);
  apply_process_settings(config);

  // The state: fresh (the same weights on every rank) or a checkpoint's.
  const data::Manifest manifest = data::read_manifest(config.data.train);
  const DataShape shape = data_shape(config, &manifest);
  const std::string config_yaml = to_yaml(resolved_config(config, shape));
  ClassifierState state = make_classifier_state(config, shape, device, comm);
  const std::string checkpoint = checkpoint_to_resume(resume, lc.run_dir);
  if (!checkpoint.empty()) {
    load_classifier_checkpoint(checkpoint, state);
    if (rank == 0) spdlog::info("resumed from {} at step {}", checkpoint, state.step);
  }

  // What the steps use.
  const diffusion::GaussianDiffusion diffusion = to_device(make_diffusion(config), device);
  const diffusion::TimestepSampler sampler =
      make_timestep_sampler(config, diffusion.num_timesteps, device);
  Classifier classifier = make_classifier(state.net, config);
  parallel::GradReducerOptions reducer_options;
  reducer_options.watchdog = cluster.watchdog;
  reducer_options.bucket_bytes = static_cast<std::size_t>(tc.bucket_mb * (1 << 20));
  parallel::GradReducer reducer(state.net->parameters(), comm, reducer_options);
  data::Loader loader(loader_options(config, shape, rank, world, device), state.cursor);
  const HeldOutBatch held_out =
      lc.bpd_every > 0 ? read_heldout_batch(config, shape, rank, world, device) : HeldOutBatch{};
  std::ofstream metrics_file;
  if (rank == 0) {
    fs::create_directories(lc.run_dir);
    set_aside_checkpoints_after(lc.run_dir, state.step);
    std::ofstream(fs::path(lc.run_dir) / "config.yaml") << config_yaml;
    metrics_file.open(fs::path(lc.run_dir) / "metrics.jsonl", std::ios::app);
    spdlog::info(
        "run directory {}: a {}-class classifier ({} pooling), {} parameters, {} x {}x{}x{} "
        "images, {} ranks, device {}{}",
        lc.run_dir, shape.num_classes, model::to_string(config.model.pool),
        model::parameter_count(*state.net), manifest.num_samples(), shape.channels,
        shape.image_size, shape.image_size, world, device.str(),
        config.model.use_checkpoint ? ", gradient checkpointing" : "");
  }
  const auto write = [&](nlohmann::json line) {
    if (rank != 0) return;
    metrics_file << line.dump() << "\n" << std::flush;
  };

  TrainResult result;
  result.run_dir = lc.run_dir;
  const auto heldout = [&] {
    nlohmann::json line = evaluate_heldout(classifier, diffusion, config, held_out, comm);
    line["step"] = state.step;
    write(line);
    if (rank == 0)
      spdlog::info(
          "step {}: held-out loss {:.3f}, accuracy {:.3f} (by quarter of t: {:.2f} {:.2f} "
          "{:.2f} {:.2f})",
          state.step, line["heldout_loss"].get<double>(), line["heldout_accuracy"].get<double>(),
          line["heldout_accuracy_q0"].get<double>(), line["heldout_accuracy_q1"].get<double>(),
          line["heldout_accuracy_q2"].get<double>(), line["heldout_accuracy_q3"].get<double>());
  };
  const auto save = [&](const char* why) {
    result.last_checkpoint = save_and_wait(
        cluster, lc.run_dir, state.step, tc.keep_checkpoints, why,
        [&](const std::string& path) { save_classifier_checkpoint(path, state, config_yaml); });
  };

  Tally tally(device, diffusion.num_timesteps);
  DataWait data_wait(device);
  at::Tensor grad_norm_sum = at::zeros({}, at::TensorOptions(device).dtype(at::kDouble));
  if (lc.bpd_every > 0 && state.step == 0) heldout();  // chance level, to compare
  StopSignalGuard signals;
  const auto start = Clock::now();
  auto last_log = start;
  int64_t last_log_step = state.step;
  while (tc.max_steps == 0 || state.step < tc.max_steps) {
    if (state.step % lc.log_every == 0) {
      const Stop stop = agree_on_stop(comm, tc, start, device, state.step);
      result.interrupted = stop == Stop::signal;
      if (stop != Stop::no) break;
    }
    if (cluster.watchdog) cluster.watchdog->set_step(state.step);

    // The step.
    const auto wait_start = Clock::now();
    const data::Batch batch = loader.next();
    data_wait.add(seconds_between(wait_start, Clock::now()));
    state.cursor = loader.cursor();
    const StepInputs inputs =
        draw_step_inputs(config.seed, state.step, sampler, batch, tc.batch_size);
    torch::manual_seed(step_seed(config.seed, state.step, RngStream::dropout, rank));
    grad_norm_sum += classifier_step(state, classifier, diffusion, tc, reducer, inputs, tally);

    // Every N steps: the log line, held-out accuracy, a checkpoint.
    const int64_t step = state.step;
    if (step % lc.log_every == 0 || step == tc.max_steps) {
      const auto now = Clock::now();
      const double seconds = seconds_between(last_log, now);
      const int64_t steps = step - last_log_step;
      nlohmann::json line = tally.reduce_and_reset(comm, "");
      line["step"] = step;
      line["grad_norm"] = grad_norm_sum.item<double>() / static_cast<double>(steps);
      grad_norm_sum.zero_();
      line["lr"] = learning_rate(tc, step - 1);
      line["images_per_s"] = static_cast<double>(steps * tc.batch_size) / seconds;
      line["step_time_ms"] = 1000.0 * seconds / static_cast<double>(steps);
      add_data_wait(line, data_wait.gather_and_reset(comm, steps));
      line["elapsed_s"] = seconds_between(start, now);
      write(line);
      if (rank == 0)
        spdlog::info(
            "step {}{}: loss {:.4f}, accuracy {:.3f} (by quarter of t: {:.2f} {:.2f} "
            "{:.2f} {:.2f}), grad norm {:.3f}, {:.1f} images/s, {:.0f} ms/step{}",
            step, tc.max_steps > 0 ? fmt::format("/{}", tc.max_steps) : "",
            line["loss"].get<double>(), line["accuracy"].get<double>(),
            line["accuracy_q0"].get<double>(), line["accuracy_q1"].get<double>(),
            line["accuracy_q2"].get<double>(), line["accuracy_q3"].get<double>(),
            line["grad_norm"].get<double>(), line["images_per_s"].get<double>(),
            line["step_time_ms"].get<double>(), data_wait_note(line));
      last_log = now;
      last_log_step = step;
    }
    if (lc.bpd_every > 0 && step % lc.bpd_every == 0) heldout();
    if (step % tc.checkpoint_every == 0) save("periodic");
  }
  if (lc.bpd_every > 0 && state.step % lc.bpd_every != 0) heldout();  // the final classifier's
  if (result.last_checkpoint != checkpoint_path(lc.run_dir, state.step))
    save(result.interrupted ? "on signal" : "final");
  result.step = state.step;
  return result;
}

}  // namespace difftrain::train
