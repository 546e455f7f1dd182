#include "train/trainer.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/loader.hpp"
#include "data/manifest.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "model/parameter_count.hpp"
#include "parallel/communicator.hpp"
#include "parallel/grad_reducer.hpp"
#include "parallel/watchdog.hpp"
#include "train/checkpoint.hpp"
#include "train/faults.hpp"
#include "train/heldout_bpd.hpp"
#include "train/metrics.hpp"
#include "train/phema_snapshot.hpp"
#include "train/replica_check.hpp"
#include "train/sample_grid.hpp"
#include "train/step_rng.hpp"
#include "train/stop_rule.hpp"
#include "train/train_state.hpp"
#include "train/train_step.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace difftrain::train {
namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Loads `path` into the state, refusing a checkpoint trained for another objective unless asked.
void resume_from(const std::string& path, TrainState& state, const Config& config,
                 bool allow_objective_change) {
  std::vector<std::string> unknown_keys;  // keys of another version: not the objective's
  const CheckpointInfo info = read_checkpoint_info(path);
  require_kind(info, path, "diffusion");
  const Config stored =
      parse_stored_config(info.config_yaml, path + " (stored config)", unknown_keys);
  // The null label is a row of the label embedding: the weights of one setting do not load
  // into the model of the other.
  if ((stored.training.p_uncond > 0) != (config.training.p_uncond > 0))
    throw ConfigError(fmt::format(
        "{} was trained with training.p_uncond = {}; with {} the model {} the null label's row "
        "of the label embedding: keep training.p_uncond {} to resume, or start a new run",
        path, stored.training.p_uncond, config.training.p_uncond,
        config.training.p_uncond > 0 ? "would have" : "would lose",
        stored.training.p_uncond > 0 ? "> 0" : "= 0"));
  if (stored.model.low_res_noise != config.model.low_res_noise)
    throw ConfigError(fmt::format(
        "{} was trained with model.low_res_noise = {}: the model {} the noise level's embedding "
        "(low_res_noise_embed); keep model.low_res_noise {} to resume, or start a new run",
        path, stored.model.low_res_noise, config.model.low_res_noise ? "would have" : "would lose",
        stored.model.low_res_noise));
  const std::vector<std::string> changes = objective_changes(stored, config);
  const std::string listed = fmt::format("{}", fmt::join(changes, "; "));
  if (!changes.empty() && !allow_objective_change)
    throw ConfigError(path + " was trained for another objective (" + listed +
                      "): resuming would train these weights on a different loss; pass "
                      "--allow-objective-change to fine-tune on purpose, or start a new run");
  load_checkpoint(path, state, /*sampler_history=*/changes.empty());
  if (!changes.empty())
    spdlog::warn("{}: continuing with another objective ({}); the timestep sampler starts afresh",
                 path, listed);
  // Not an error: the quickstart's run continues across a change of the demo's geometry.
  const std::vector<std::string> inputs = input_changes(stored, config);
  if (!inputs.empty())
    spdlog::warn(
        "{}: continuing on inputs of another size ({}); the convolutional weights carry over, but "
        "bits/dim before and after this step are averaged over different dimensions",
        path, fmt::join(inputs, "; "));
}

// The run directory's outputs; rank 0 writes them.
struct RunFiles {
  std::ofstream metrics;           // metrics.jsonl: a line per log step and per held-out estimate
  std::ofstream timestep_metrics;  // timestep_metrics.jsonl: per-t statistics
  void write(std::ofstream& file, const nlohmann::json& line) {
    if (file.is_open()) file << line.dump() << "\n" << std::flush;
  }
};

RunFiles open_run_files(const std::string& run_dir, const std::string& config_yaml, int rank,
                        int64_t step) {
  RunFiles files;
  if (rank != 0) return files;
  fs::create_directories(run_dir);
  set_aside_checkpoints_after(run_dir, step);
  if (const int n = phema::set_aside_snapshots_after(run_dir, step))
    spdlog::warn(
        "moved {} post-hoc EMA snapshot(s) after step {} into their folder's "
        "superseded_at_step_{}",
        n, step, step);
  std::ofstream(fs::path(run_dir) / "config.yaml") << config_yaml;
  files.metrics.open(fs::path(run_dir) / "metrics.jsonl", std::ios::app);
  files.timestep_metrics.open(fs::path(run_dir) / "timestep_metrics.jsonl", std::ios::app);
  return files;
}

// The log line of the steps since the last one: reduced metrics, warnings about skipped steps,
// and the end of a run whose steps keep failing (training.max_bad_steps, a collapsed fp16 scale).
void log_progress(Metrics& metrics, const TrainState& state, const TrainingConfig& tc,
                  parallel::Communicator& comm, const c10::Device& device, RunFiles& files,
                  double seconds, int64_t steps, double elapsed) {
  const int rank = comm.rank();
  const MetricsSummary s = metrics.reduce_and_reset(comm);
  const std::vector<int64_t> bad_t = metrics.nonfinite_timesteps_and_reset();
  if (s.skipped_steps > 0) {
    if (state.scaler.enabled && rank == 0)
      spdlog::warn("{} of the last {} steps skipped: non-finite fp16 gradients; loss scale now {}",
                   s.skipped_steps, s.steps, state.scaler.scale.item<float>());
    else if (!state.scaler.enabled && (!bad_t.empty() || rank == 0))
      spdlog::warn("rank {}: {} of the last {} steps skipped: non-finite loss{}", rank,
                   s.skipped_steps, s.steps,
                   bad_t.empty() ? " or gradients"
                                 : fmt::format(" at timesteps {}", fmt::join(bad_t, ", ")));
    if (!state.scaler.enabled && s.longest_skip_run >= tc.max_bad_steps)
      throw std::runtime_error(fmt::format(
          "{} consecutive steps with a non-finite loss (training.max_bad_steps = {}); stopping at "
          "step {} instead of training on garbage: lower training.lr or check the data",
          s.longest_skip_run, tc.max_bad_steps, state.step));
  }
  check_loss_scale(state.scaler);
  if (rank != 0) return;
  nlohmann::json line = summary_json(s);
  line["step"] = state.step;
  line["lr"] = learning_rate(tc, state.step - 1);
  line["loss_scale"] = state.scaler.scale.item<float>();
  line["images_per_s"] = static_cast<double>(steps * tc.batch_size) / seconds;
  line["step_time_ms"] = 1000.0 * seconds / static_cast<double>(steps);
  line["rss_mb"] = resident_memory_mb();
  if (const auto memory = device_memory_and_reset_peak(device)) {
    line["device_peak_allocated_mb"] = memory->peak_allocated_mb;
    line["device_reserved_mb"] = memory->reserved_mb;
  }
  line["elapsed_s"] = elapsed;
  files.write(files.metrics, line);
  spdlog::info("{}", log_line(line, tc.max_steps));
}

void log_heldout_bpd(const HeldOutBpd& e, int64_t step, double seconds, RunFiles& files) {
  files.write(files.metrics, {{"step", step},
                              {"bpd_estimate", e.bpd},
                              {"bpd_standard_error", e.standard_error},
                              {"bpd_prior", e.prior_bpd},
                              {"bpd_images", e.images},
                              {"bpd_timesteps", e.timesteps},
                              {"bpd_seconds", seconds}});
  spdlog::info("step {}: held-out bits/dim {:.3f} +- {:.3f} ({} images, {} timesteps, {:.1f} s)",
               step, e.bpd, e.standard_error, e.images, e.timesteps, seconds);
}

void check_replicas(const TrainState& state, parallel::Communicator& comm) {
  const std::vector<int> diverged = diverged_ranks(replicated_tensors(state), comm);
  if (!diverged.empty())
    throw std::runtime_error(fmt::format(
        "replica check after step {}: the parameters, optimizer, EMA or timestep-sampler state of "
        "rank(s) {} differ from rank 0's",
        state.step, fmt::join(diverged, ", ")));
}

}  // namespace

std::string save_and_wait(Cluster& cluster, const std::string& run_dir, int64_t step, int64_t keep,
                          const char* why,
                          const std::function<void(const std::string& path)>& write) {
  const std::string path = checkpoint_path(run_dir, step);
  if (cluster.comm.rank() == 0) {
    write(path);
    prune_checkpoints(run_dir, keep, step);
    spdlog::info("checkpoint {} ({})", path, why);
  }
  if (cluster.slow_barrier)
    cluster.slow_barrier("checkpoint at step " + std::to_string(step));
  else
    cluster.comm.barrier();
  return path;
}

TrainResult train(const Config& config, Cluster& cluster, const TrainOptions& options) {
  parallel::Communicator& comm = cluster.comm;
  const int rank = comm.rank(), world = comm.size();
  const c10::Device device = cluster.device;
  const TrainingConfig& tc = config.training;
  const LoggingConfig& lc = config.logging;
  validate(config);
  validate_for_world(config, world);
  check_paths(config);
  const Fault fault = parse_fault(options.fault, options.fault_rank, rank);
  apply_process_settings(config);
  if (tc.precision == Precision::fp16 && !device.is_cuda() && rank == 0)
    spdlog::warn(
        "training.precision fp16 on {}: the CPU runs it through slow fallbacks, about 10x the "
        "time of fp32 (measured on the demo); use bf16 (with AVX-512 BF16 or AMX) or fp32",
        device.str());

  // The state: fresh (the same weights on every rank) or a checkpoint's.
  const data::Manifest manifest = data::read_manifest(config.data.train);
  const DataShape shape = data_shape(config, &manifest);
  const std::string config_yaml = to_yaml(resolved_config(config, shape));
  TrainState state = make_train_state(config, shape, device, comm);
  const std::string resume = checkpoint_to_resume(options.resume, lc.run_dir);
  if (!resume.empty()) {
    resume_from(resume, state, resolved_config(config, shape), options.allow_objective_change);
    if (rank == 0) spdlog::info("resumed from {} at step {}", resume, state.step);
  }

  // What the steps use: the objective, the gradient all-reduce, the data, the telemetry.
  const diffusion::GaussianDiffusion diffusion = to_device(make_diffusion(config), device);
  parallel::GradReducerOptions reducer_options;
  reducer_options.watchdog = cluster.watchdog;
  reducer_options.bucket_bytes = static_cast<std::size_t>(tc.bucket_mb * (1 << 20));
  parallel::GradReducer reducer(state.net->parameters(), comm, reducer_options);
  const StepContext step_context{
      make_denoiser(state.net, config), diffusion, make_loss_spec(config), tc, comm, &reducer};
  data::Loader loader(loader_options(config, shape, rank, world, device), state.cursor);
  const LabelDropout label_dropout{tc.p_uncond, shape.num_classes};
  const LowResNoise low_res_noise =
      config.model.low_res_noise
          ? LowResNoise{low_res_noise_level(tc.low_res_noise_max, config.diffusion.steps),
                        config.model.low_res_size}
          : LowResNoise{};
  Metrics metrics(device, diffusion.num_timesteps, lc.timestep_buckets);
  const HeldOutBatch held_out =
      lc.bpd_every > 0 ? read_heldout_batch(config, shape, rank, world, device) : HeldOutBatch{};
  RunFiles files = open_run_files(lc.run_dir, config_yaml, rank, state.step);
  if (rank == 0)
    spdlog::info("run directory {}: {} parameters, {} x {}x{}x{} images, {} ranks, device {}{}{}",
                 lc.run_dir, model::parameter_count(state.net), manifest.num_samples(),
                 shape.channels, shape.image_size, shape.image_size, world, device.str(),
                 device.is_cuda() ? " (" + cuda_settings_in_use() + ")" : "",
                 config.model.use_checkpoint ? ", gradient checkpointing" : "");

  TrainResult result;
  result.run_dir = lc.run_dir;
  const auto estimate_bpd = [&] {
    const auto t0 = Clock::now();
    const HeldOutBpd e =
        estimate_heldout_bpd(step_context.denoiser, diffusion, config, held_out, comm);
    if (rank == 0) log_heldout_bpd(e, state.step, seconds_between(t0, Clock::now()), files);
  };
  // Rank 0 alone draws the grid; the others wait for it in the next step's all-reduce.
  const auto sample_grid = [&] {
    if (rank != 0) return;
    const auto t0 = Clock::now();
    const std::string path = sample_grid_path(lc.run_dir, state.step);
    if (!write_sample_grid(state, config, shape, diffusion, manifest.height, manifest.width, path))
      return;
    const double seconds = seconds_between(t0, Clock::now());
    files.write(files.metrics,
                {{"step", state.step}, {"sample_grid", path}, {"sample_seconds", seconds}});
    spdlog::info("step {}: {} samples in {} ({:.1f} s)", state.step, lc.sample_num, path, seconds);
  };
  const auto snapshot = [&] {  // of the post-hoc EMA profiles; a no-op without them
    if (rank == 0)
      phema::write_snapshot(lc.run_dir, state.step, state.phema, *state.net, config_yaml);
  };
  const auto save = [&](const char* why) {
    result.last_checkpoint =
        save_and_wait(cluster, lc.run_dir, state.step, tc.keep_checkpoints, why,
                      [&](const std::string& path) { save_checkpoint(path, state, config_yaml); });
  };

  if (lc.bpd_every > 0 && state.step == 0) estimate_bpd();  // the untrained model, to compare
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

    // The batch, and how long this rank waited for it (a late_batch fault waits here too).
    const auto wait_start = Clock::now();
    const bool nan_loss = inject_fault(fault, state.step, state);
    const data::Batch batch = loader.next();
    metrics.add_data_wait(seconds_between(wait_start, Clock::now()));

    // The step.
    state.cursor = loader.cursor();
    const StepInputs inputs = draw_step_inputs(config.seed, state.step, state.sampler, batch,
                                               tc.batch_size, label_dropout, low_res_noise);
    torch::manual_seed(step_seed(config.seed, state.step, RngStream::dropout, rank));
    const StepResult r = train_step(state, step_context, inputs, {}, nan_loss);
    metrics.add_samples(inputs.t, r.terms.loss, r.terms.mse, r.terms.weighted_mse, r.terms.vb);
    metrics.add_step(r.grad_norm, r.skipped);

    // Every N steps: the log line, per-t statistics, the replica check, held-out bits/dim, a
    // sample grid, a checkpoint.
    const int64_t step = state.step;
    if (step % lc.log_every == 0 || step == tc.max_steps) {
      const auto now = Clock::now();
      log_progress(metrics, state, tc, comm, device, files, seconds_between(last_log, now),
                   step - last_log_step, seconds_between(start, now));
      last_log = now;
      last_log_step = step;
    }
    if (lc.timestep_stats_every > 0 && step % lc.timestep_stats_every == 0) {
      nlohmann::json stats = metrics.timestep_stats_and_reset(comm);
      stats["step"] = step;
      files.write(files.timestep_metrics, stats);
    }
    if (tc.check_replicas_every > 0 && step % tc.check_replicas_every == 0)
      check_replicas(state, comm);
    if (lc.bpd_every > 0 && step % lc.bpd_every == 0) estimate_bpd();
    if (lc.sample_every > 0 && step % lc.sample_every == 0) sample_grid();
    if (step % tc.phema.snapshot_every == 0) snapshot();
    if (step % tc.checkpoint_every == 0) save("periodic");
  }
  if (state.step % tc.phema.snapshot_every != 0) snapshot();  // the last, at the end of training
  if (result.last_checkpoint != checkpoint_path(lc.run_dir, state.step))
    save(result.interrupted ? "on signal" : "final");
  result.step = state.step;
  return result;
}

}  // namespace difftrain::train
