#include "train/trainer.hpp"

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/host_to_device.hpp"
#include "data/loader.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "diffusion/timestep_sampler.hpp"
#include "dist/broadcast_parameters.hpp"
#include "dist/communicator.hpp"
#include "dist/grad_reducer.hpp"
#include "dist/watchdog.hpp"
#include "model/parameter_count.hpp"
#include "model/unet.hpp"
#include "train/adamw.hpp"
#include "train/checkpoint.hpp"
#include "train/ema.hpp"
#include "train/heldout_bpd.hpp"
#include "train/loss_scaler.hpp"
#include "train/metrics.hpp"
#include "train/phema.hpp"
#include "train/phema_snapshot.hpp"
#include "train/replica_check.hpp"
#include "train/setup.hpp"
#include "train/step_rng.hpp"
#include "train/train_step.hpp"

namespace fs = std::filesystem;

namespace difftrain::train {
namespace {

// Set by SIGTERM / SIGINT (cluster preemption, Ctrl-C); the loop checkpoints and stops. The one
// piece of process-wide state here: a signal handler can reach nothing else.
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  g_stop_signal.store(sig);
}

struct SignalGuard {
  struct sigaction old_term {
  }, old_int{};
  SignalGuard() {
    g_stop_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGINT, &sa, &old_int);
  }
  ~SignalGuard() {
    sigaction(SIGTERM, &old_term, nullptr);
    sigaction(SIGINT, &old_int, nullptr);
  }
};

struct Fault {
  std::string kind;  // "", hang, exit, kill, term, nan, diverge
  int64_t step = -1;
};

Fault parse_fault(const TrainOptions& o, int rank) {
  if (o.fault.empty() || (o.fault_rank >= 0 && o.fault_rank != rank)) return {};
  const auto at = o.fault.find('@');
  Fault f{o.fault.substr(0, at), at == std::string::npos ? -1 : std::stoll(o.fault.substr(at + 1))};
  const bool known = f.kind == "hang" || f.kind == "exit" || f.kind == "kill" || f.kind == "nan" ||
                     f.kind == "diverge" || f.kind == "term";
  if (!known || f.step < 0)
    throw ConfigError("--fault '" + o.fault +
                      "' must be hang@STEP, exit@STEP, kill@STEP, term@STEP, nan@STEP or "
                      "diverge@STEP");
  return f;
}

double lr_at(const TrainingConfig& t, int64_t step) {
  double lr = t.lr;
  if (t.warmup_steps > 0) lr *= std::min(1.0, static_cast<double>(step + 1) / t.warmup_steps);
  if (t.lr_anneal_steps > 0)
    lr *= std::max(0.0, 1.0 - static_cast<double>(step) / t.lr_anneal_steps);
  return lr;
}

std::vector<at::Tensor> grads_of(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  return grads;
}

// The global L2 norm of the gradients, on the device (no host synchronisation).
at::Tensor global_grad_norm(const std::vector<at::Tensor>& grads) {
  if (grads.empty()) return at::zeros({});
  return at::stack(at::_foreach_norm(grads)).to(at::kFloat).norm();
}

std::string join_ints(const std::vector<int64_t>& values) {
  std::string s;
  for (std::size_t i = 0; i < values.size(); ++i)
    s += (i ? ", " : "") + std::to_string(values[i]);
  return s;
}

// What must be identical on every rank after a step.
std::vector<at::Tensor> replicated_state(const TrainStateRefs& s) {
  std::vector<at::Tensor> state = s.model.parameters();
  for (const at::Tensor& p : s.model.parameters()) {
    const auto it = s.optimizer.state->state().find(p.unsafeGetTensorImpl());
    if (it == s.optimizer.state->state().end()) continue;
    const auto& adam = static_cast<const torch::optim::AdamWParamState&>(*it->second);
    state.push_back(adam.exp_avg());
    state.push_back(adam.exp_avg_sq());
  }
  for (const Ema& ema : s.emas)
    state.insert(state.end(), ema.params.begin(), ema.params.end());
  state.push_back(s.optimizer.steps);
  state.push_back(s.sampler.loss_history);
  state.push_back(s.sampler.loss_counts);
  if (s.phema) phema::append_replicated_state(*s.phema, state);
  return state;
}

struct Run {
  std::string dir;
  std::ofstream metrics;           // rank 0 only
  std::ofstream timestep_metrics;  // rank 0 only
};

}  // namespace

TrainResult train(const Config& config, Cluster& cluster, const TrainOptions& options) {
  dist::Communicator& comm = cluster.comm;
  const int rank = comm.rank(), world = comm.size();
  validate(config);
  validate_for_world(config, world);
  const Fault fault = parse_fault(options, rank);
  const auto& tc = config.training;

  if (tc.threads > 0) at::set_num_threads(static_cast<int>(tc.threads));
  if (config.deterministic) at::globalContext().setDeterministicAlgorithms(true, false);
  const c10::Device device = cluster.device;

  // What the data says about the model: image size after padding, channels, classes.
  const data::Manifest manifest = data::read_manifest(config.data.train);
  const DataShape shape = data_shape(config, &manifest);
  // The run's config as resolved: with the shape the data gave the model, so that its checkpoints
  // load where the data is not (sample and eval on another machine).
  Config resolved = config;
  resolved.model.image_size = shape.image_size;
  resolved.model.in_channels = shape.channels;
  resolved.model.num_classes = shape.num_classes;
  const std::string config_yaml = to_yaml(resolved);

  torch::manual_seed(config.seed);  // the initial weights; rank 0's are broadcast below
  model::UNet net(unet_config(config, shape));
  net->to(device);
  if (use_channels_last(config, tc.precision)) net->to(at::MemoryFormat::ChannelsLast);
  const std::vector<at::Tensor> params = net->parameters();

  const diffusion::GaussianDiffusion diffusion = to_device(make_diffusion(config), device);
  const diffusion::LossSpec loss_spec = make_loss_spec(config);
  const long T = diffusion.num_timesteps;
  diffusion::TimestepSampler sampler = make_timestep_sampler(config, T, device);

  AdamW optimizer = make_adamw(params, tc.lr, tc.weight_decay, net->named_parameters().keys());
  std::vector<Ema> emas = make_emas(tc.ema_rates, params);
  phema::PowerFunctionEma power_ema = phema::make_power_function_ema(tc.phema.sigma_rels, params);
  LossScaler scaler = make_loss_scaler(tc.precision == "fp16", tc.loss_scale_init,
                                       tc.loss_scale_growth_interval, tc.loss_scale_min, device);
  int64_t step = 0, data_epoch = 0, data_batch = 0;
  TrainStateRefs state{*net, optimizer, emas, sampler, scaler, step, data_epoch, data_batch};
  state.phema = &power_ema;

  Run run;
  run.dir = config.logging.run_dir;
  std::string resume_from;
  if (options.resume == "auto") {
    if (auto latest = latest_valid_checkpoint(run.dir)) resume_from = *latest;
  } else {
    resume_from = options.resume;
  }
  if (!resume_from.empty()) {
    load_checkpoint(resume_from, state);
    if (rank == 0) spdlog::info("resumed from {} at step {}", resume_from, step);
  } else {
    std::vector<dist::NamedTensor> named, buffers;
    for (const auto& p : net->named_parameters())
      named.push_back({p.key(), p.value()});
    for (const auto& b : net->named_buffers())
      buffers.push_back({b.key(), b.value()});
    dist::broadcast_parameters(comm, named, buffers);
    // EMAs start from the broadcast weights.
    emas = make_emas(tc.ema_rates, params);
  }

  data::LoaderOptions lo;
  lo.manifest = config.data.train;
  lo.global_batch = tc.batch_size;
  lo.rank = rank;
  lo.world = world;
  lo.seed = static_cast<uint64_t>(config.seed);
  lo.last_batch = data::parse_last_batch(config.data.last_batch);
  lo.random_flip = config.data.random_flip;
  lo.labels = shape.num_classes > 0;
  lo.prefetch = static_cast<int>(config.data.prefetch);
  if (config.data.pad_to > 0) lo.pad_to = config.data.pad_to;
  lo.device = device;
  data::Loader loader(lo, data::Cursor{data_epoch, data_batch});

  if (rank == 0) {
    fs::create_directories(run.dir);
    // Snapshots after the starting step belong to steps about to be trained again.
    if (const int n = phema::remove_snapshots_after(run.dir, step))
      spdlog::info("removed {} post-hoc EMA snapshot(s) after step {}", n, step);
    std::ofstream(fs::path(run.dir) / "config.yaml") << config_yaml;
    run.metrics.open(fs::path(run.dir) / "metrics.jsonl", std::ios::app);
    run.timestep_metrics.open(fs::path(run.dir) / "timestep_metrics.jsonl", std::ios::app);
    spdlog::info("run directory {}: {} parameters, {} x {}x{}x{} images, {} ranks, device {}",
                 run.dir, model::parameter_count(net), manifest.num_samples(), shape.channels,
                 shape.image_size, shape.image_size, world, device.str());
  }

  std::unique_ptr<dist::GradReducer> reducer;
  if (world > 1) {
    dist::GradReducerOptions ro;
    ro.watchdog = cluster.watchdog;
    ro.bucket_bytes = static_cast<std::size_t>(tc.bucket_mb * (1 << 20));
    reducer = std::make_unique<dist::GradReducer>(params, comm, ro);
  }

  const int64_t B = tc.batch_size, b = loader.batch_size();
  const int64_t C = shape.channels, H = shape.image_size;
  StepSettings settings;
  settings.microbatch = tc.microbatch;
  settings.timestep_scale = timestep_scale(config);
  settings.autocast = tc.precision != "fp32";
  settings.autocast_dtype = tc.precision == "bf16" ? at::kBFloat16 : at::kHalf;
  if (scaler.enabled) settings.loss_scale = scaler.scale;  // updated in place by the scaler
  Metrics metrics(device, T, config.logging.timestep_buckets);
  const int64_t bpd_every = config.logging.bpd_every;
  const HeldOutBatch held_out =
      bpd_every > 0 ? read_heldout_batch(config, shape, rank, world, device) : HeldOutBatch{};
  const auto log_heldout_bpd = [&] {
    const auto t0 = std::chrono::steady_clock::now();
    const HeldOutBpd e = estimate_heldout_bpd(*net, diffusion, config, held_out, comm);
    if (rank != 0) return;
    nlohmann::json line;
    line["step"] = step;
    line["bpd_estimate"] = e.bpd;
    line["bpd_standard_error"] = e.standard_error;
    line["bpd_prior"] = e.prior_bpd;
    line["bpd_images"] = e.images;
    line["bpd_timesteps"] = e.timesteps;
    line["bpd_seconds"] =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    run.metrics << line.dump() << "\n" << std::flush;
    spdlog::info("step {}: held-out bits/dim {:.3f} +- {:.3f} ({} images, {} timesteps, {:.1f} s)",
                 step, e.bpd, e.standard_error, e.images, e.timesteps,
                 line["bpd_seconds"].get<double>());
  };
  if (bpd_every > 0 && step == 0) log_heldout_bpd();  // the untrained model, for comparison
  SignalGuard signals;
  const auto t_start = std::chrono::steady_clock::now();
  auto t_last_log = t_start;
  int64_t last_log_step = step;
  // The longest run of skipped steps since the last log line, kept on the device
  // (training.max_bad_steps is checked when logging).
  const auto f32 = at::TensorOptions(device).dtype(at::kFloat);
  at::Tensor skips_in_a_row = at::zeros({}, f32), longest_skip_run = at::zeros({}, f32);
  TrainResult result;
  result.run_dir = run.dir;

  const auto save = [&](const char* why) {
    const std::string path = checkpoint_path(run.dir, step);
    if (rank == 0) {
      save_checkpoint(path, state, config_yaml);
      prune_checkpoints(run.dir, tc.keep_checkpoints);
      spdlog::info("checkpoint {} ({})", path, why);
    }
    if (world > 1) {
      if (cluster.slow_barrier)
        cluster.slow_barrier("checkpoint at step " + std::to_string(step));
      else
        comm.barrier();
    }
    result.last_checkpoint = path;
  };

  while (tc.max_steps == 0 || step < tc.max_steps) {
    // Stop together: a signal or the time limit on any rank stops every rank at the same step.
    // Ranks agree on it at logging steps only, so that the steps between need no collective.
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    int stop = g_stop_signal.load() != 0 ? 2 : (tc.max_time > 0 && elapsed >= tc.max_time ? 1 : 0);
    if (world > 1) {
      if (step % config.logging.log_every != 0) {
        stop = 0;
      } else {
        at::Tensor flag = at::full({1}, stop, at::TensorOptions(device).dtype(at::kInt));
        comm.all_reduce(flag, dist::ReduceOp::max);
        stop = flag.item<int>();
      }
    }
    if (stop) {
      result.interrupted = stop == 2;
      if (rank == 0)
        spdlog::info("{} at step {}",
                     stop == 2 ? "stop signal received" : "training.max_time reached", step);
      break;
    }
    if (cluster.watchdog) cluster.watchdog->set_step(step);
    if (fault.step == step) {
      if (fault.kind == "exit") std::_Exit(3);
      if (fault.kind == "kill") raise(SIGKILL);
      if (fault.kind == "term") raise(SIGTERM);  // as Slurm before the time limit
      if (fault.kind == "diverge") {
        torch::NoGradGuard no_grad;
        params.front().add_(1e-3);
      }
      if (fault.kind == "hang")
        for (;;)
          std::this_thread::sleep_for(std::chrono::seconds(1));
    }

    const data::Batch batch = loader.next();
    data_epoch = loader.cursor().epoch;
    data_batch = loader.cursor().batch;

    // The global batch's timesteps, drawn on every rank (stratified draws need all of them), and
    // this rank's rows of the noise; dropout masks are this rank's own.
    const diffusion::TimestepDraw draw = diffusion::draw_timesteps(
        sampler, B, cpu_generator(step_seed(config.seed, step, RngStream::timesteps)));
    const at::Tensor t = draw.t.narrow(0, batch.row_offset, b);
    const at::Tensor weights = draw.weights.narrow(0, batch.row_offset, b);
    const at::Tensor noise =
        host_to_device(step_noise(config.seed, step, batch.row_offset, b, {C, H, H}), device);
    torch::manual_seed(step_seed(config.seed, step, RngStream::dropout, rank));

    if (reducer)
      reducer->zero_grad();
    else
      optimizer.state->zero_grad();
    const StepTerms terms = forward_backward(
        *net, diffusion, loss_spec, {batch.images, t, weights, noise, batch.labels}, settings,
        reducer.get(), fault.kind == "nan" && fault.step == step);
    metrics.add_samples(t, terms.loss, terms.mse, terms.weighted_mse, terms.vb);
    const at::Tensor& step_losses = terms.loss;
    if (reducer) reducer->finish();

    // Every rank records the whole global batch, in global order, so samplers stay identical.
    if (diffusion::records_losses(sampler))
      diffusion::record_losses(sampler, world > 1 ? comm.all_gather(t) : t,
                               world > 1 ? comm.all_gather(step_losses) : step_losses);

    const std::vector<at::Tensor> grads = grads_of(params);
    const at::Tensor overflow = unscale_and_update(scaler, grads);
    const at::Tensor grad_norm = global_grad_norm(grads);
    // Decided on the device, without a host sync. The gradients are averaged over ranks already,
    // so every rank takes the same decision.
    const at::Tensor skip =
        at::logical_or(overflow.to(at::kBool), at::isfinite(grad_norm).logical_not())
            .to(at::kFloat);
    if (tc.grad_clip > 0) {
      const at::Tensor coef = (tc.grad_clip / (grad_norm + 1e-6)).clamp_max(1.0);
      at::_foreach_mul_(grads, coef);
    }
    adamw_step(optimizer, lr_at(tc, step), skip);
    update_emas(emas, params, step, tc.ema_warmup, skip);
    phema::update(power_ema, params, B, skip);
    metrics.add_step(grad_norm, skip);
    skips_in_a_row.mul_(skip).add_(skip);
    at::maximum_out(longest_skip_run, longest_skip_run, skips_in_a_row);
    ++step;

    if (step % config.logging.log_every == 0 || step == tc.max_steps) {
      const auto now = std::chrono::steady_clock::now();
      const double seconds = std::chrono::duration<double>(now - t_last_log).count();
      const int64_t steps = step - last_log_step;
      const MetricsSummary s = metrics.reduce_and_reset(comm);
      const std::vector<int64_t> bad_t = metrics.nonfinite_timesteps_and_reset();
      if (s.skipped_steps > 0) {
        if (scaler.enabled && rank == 0)
          spdlog::warn(
              "{} of the last {} steps skipped: non-finite fp16 gradients; loss scale "
              "now {}",
              s.skipped_steps, s.steps, scaler.scale.item<float>());
        else if (!scaler.enabled && (!bad_t.empty() || rank == 0))
          spdlog::warn("rank {}: {} of the last {} steps skipped: non-finite loss{}", rank,
                       s.skipped_steps, s.steps,
                       bad_t.empty() ? " or gradients" : " at timesteps " + join_ints(bad_t));
        const auto run = static_cast<int64_t>(longest_skip_run.item<float>());
        if (!scaler.enabled && run >= tc.max_bad_steps)
          throw std::runtime_error(fmt::format(
              "{} consecutive steps with a non-finite loss (training.max_bad_steps = {}); "
              "stopping at step {} instead of training on garbage: lower training.lr or check the "
              "data",
              run, tc.max_bad_steps, step));
      }
      longest_skip_run.zero_();
      check_loss_scale(scaler);
      if (rank == 0) {
        nlohmann::json line = summary_json(s);
        line["step"] = step;
        line["lr"] = lr_at(tc, step - 1);
        line["loss_scale"] = scaler.scale.item<float>();
        line["images_per_s"] = static_cast<double>(steps * B) / seconds;
        line["step_time_ms"] = 1000.0 * seconds / static_cast<double>(steps);
        line["rss_mb"] = resident_memory_mb();
        line["elapsed_s"] = std::chrono::duration<double>(now - t_start).count();
        run.metrics << line.dump() << "\n" << std::flush;
        spdlog::info("{}", log_line(line, tc.max_steps));
      }
      t_last_log = now;
      last_log_step = step;
    }
    if (config.logging.timestep_stats_every > 0 &&
        step % config.logging.timestep_stats_every == 0) {
      nlohmann::json stats = metrics.timestep_stats_and_reset(comm);
      if (rank == 0) {
        stats["step"] = step;
        run.timestep_metrics << stats.dump() << "\n" << std::flush;
      }
    }
    if (world > 1 && tc.check_replicas_every > 0 && step % tc.check_replicas_every == 0) {
      const std::vector<int> diverged = diverged_ranks(replicated_state(state), comm);
      std::string ranks;
      for (int r : diverged)
        ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
      if (!diverged.empty())
        throw std::runtime_error(fmt::format(
            "replica check after step {}: the parameters, optimizer, EMA or timestep-sampler "
            "state of rank(s) {} differ from rank 0's",
            step, ranks));
    }
    if (bpd_every > 0 && step % bpd_every == 0) log_heldout_bpd();
    if (rank == 0 && step % tc.phema.snapshot_every == 0)
      phema::write_snapshot(run.dir, step, power_ema, *net, config_yaml);
    if (step % tc.checkpoint_every == 0) save("periodic");
  }
  if (rank == 0 && step % tc.phema.snapshot_every != 0)  // the last one, at the end of training
    phema::write_snapshot(run.dir, step, power_ema, *net, config_yaml);
  if (result.last_checkpoint != checkpoint_path(run.dir, step))
    save(result.interrupted ? "on signal" : "final");
  result.step = step;
  return result;
}

}  // namespace difftrain::train
