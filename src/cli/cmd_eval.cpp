// `difftrain eval`: the full variational bound in bits/dim on held-out data, as
// improved-diffusion's image_nll.py: L_T + sum_{t>=1} L_t + L_0 with one network evaluation per
// timestep per image and x_0 predictions clamped to [-1, 1]. Under mpirun the images are split
// across ranks and the sums reduced. Image i's noise is seeded by (--seed, its index in the set)
// alone, so the result does not depend on --batch or the number of ranks.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "cli/commands.hpp"
#include "cli/line_plot.hpp"
#include "cli/run_on_world.hpp"
#include "cli/trained_model.hpp"
#include "data/manifest.hpp"
#include "data/sample_order.hpp"
#include "data/shard_reader.hpp"
#include "data/shard_set.hpp"
#include "diffusion/bound.hpp"
#include "diffusion/bound_summary.hpp"
#include "parallel/communicator.hpp"
#include "parallel/rank_device.hpp"
#include "parallel/world.hpp"
#include "train/step_rng.hpp"

namespace difftrain::cli {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kSubsetTag = 0x4556414c;  // "EVAL": the choice of the --num images

struct Options {
  ModelSource source;
  std::string data;
  int64_t num = 0;  // 0 = every image of the set
  int64_t batch = 16;
  uint64_t seed = 0;
  std::string out;
};

struct Plan {
  TrainedModel model;
  data::Manifest manifest;
  std::vector<int64_t> indices;  // the images evaluated, ascending indices into the set
  std::vector<int64_t> labels;   // of the whole set, for class-conditional models
  int64_t top = 0, left = 0;     // where an image sits in the padded canvas
  std::string out;               // report path without extension
};

std::string shape_str(int64_t c, int64_t h, int64_t w) {
  return fmt::format("{}x{}x{}", c, h, w);
}

// <run>/eval/bpd_step<N> next to a run's checkpoints/, else beside the checkpoint file.
std::string default_out(const TrainedModel& m) {
  const fs::path ckpt(m.checkpoint);
  const std::string name = fmt::format("bpd_step{}", m.step);
  if (ckpt.parent_path().filename() == "checkpoints")
    return (ckpt.parent_path().parent_path() / "eval" / name).string();
  return (ckpt.parent_path() / (ckpt.stem().string() + "_" + name)).string();
}

Plan prepare(const Options& o, const parallel::World& world) {
  if (o.batch < 1)
    throw std::invalid_argument("--batch must be >= 1, not " + std::to_string(o.batch));
  if (o.num < 0) throw std::invalid_argument("--num must be >= 0 (0 = all images)");
  Plan p;
  p.manifest = data::read_manifest(o.data);
  p.model = load_trained_model(
      o.source, parallel::rank_device(world, parallel::parse_device_request(o.source.device)),
      &p.manifest);
  const TrainedModel& m = p.model;
  const data::Manifest& d = p.manifest;
  if (m.config.training.threads > 0)
    at::set_num_threads(static_cast<int>(m.config.training.threads));

  // The held-out images must be what the network was trained on: same channels, and the
  // model's size directly or after the same padding.
  const int64_t S = m.shape.image_size;
  const bool fits =
      d.channels == m.shape.channels &&
      (m.config.data.pad_to > 0 ? d.height <= S && d.width <= S : d.height == S && d.width == S);
  if (!fits)
    throw std::invalid_argument(d.path + ": images are " +
                                shape_str(d.channels, d.height, d.width) +
                                " (CxHxW) but the model of " + m.checkpoint + " takes " +
                                shape_str(m.shape.channels, S, S) +
                                (m.config.data.pad_to > 0 ? " (padded from smaller images)" : ""));
  p.top = (S - d.height) / 2;
  p.left = (S - d.width) / 2;

  if (m.shape.num_classes > 0) {
    if (!d.labels)
      throw std::invalid_argument(d.path + ": has no labels, but the model of " + m.checkpoint +
                                  " is class-conditional");
    if (d.num_classes > m.shape.num_classes)
      throw std::invalid_argument(d.path + ": " + std::to_string(d.num_classes) +
                                  " classes, but the model knows " +
                                  std::to_string(m.shape.num_classes));
    for (std::size_t i = 0; i < d.shards.size(); ++i) {
      const auto shard = data::read_shard_labels(data::open_shard(d, i), d);
      p.labels.insert(p.labels.end(), shard.begin(), shard.end());
    }
  }

  // Every image, or a seeded random subset of --num of them (a set may be sorted by class).
  const int64_t n = d.num_samples();
  if (o.num == 0 || o.num >= n) {
    if (o.num > n)
      spdlog::warn("--num {} but {} has {} images: evaluating all of them", o.num, d.path, n);
    for (int64_t i = 0; i < n; ++i)
      p.indices.push_back(i);
  } else {
    const auto perm = data::permutation(n, data::hash_key(o.seed, kSubsetTag, 0));
    p.indices.assign(perm.begin(), perm.begin() + o.num);
    std::sort(p.indices.begin(), p.indices.end());
  }

  p.out = o.out.empty() ? default_out(m) : o.out;
  if (fs::path(p.out).extension() == ".json") p.out = fs::path(p.out).replace_extension().string();
  if (world.rank() == 0) check_output_directory(p.out, p.out + ".json");
  return p;
}

// Images [first, first + count) of p.indices as the network sees them: float [-1, 1], CHW,
// padded with -1 (black) as the loader pads.
at::Tensor read_images(data::ShardSet& shards, const Plan& p, int64_t first, int64_t count) {
  const data::Manifest& d = p.manifest;
  at::Tensor u8 = at::empty({count, d.height, d.width, d.channels}, at::kByte);
  for (int64_t i = 0; i < count; ++i)
    shards.read(p.indices[first + i], u8[i].data_ptr<uint8_t>());
  // x / 127.5 - 1 in float32, as the loader converts.
  at::Tensor x = u8.permute({0, 3, 1, 2}).to(at::kFloat).div(127.5).sub(1);
  const int64_t S = p.model.shape.image_size;
  if (d.height != S || d.width != S)
    x = at::constant_pad_nd(x, {p.left, S - d.width - p.left, p.top, S - d.height - p.top}, -1.0);
  return x.contiguous();
}

// This rank's images: the sums of the bound's terms (diffusion/bound_summary.hpp).
at::Tensor evaluate_range(const Plan& p, const Options& o, int64_t first, int64_t count,
                          bool progress) {
  const TrainedModel& m = p.model;
  const long T = m.diffusion.num_timesteps;
  data::ShardSet shards(p.manifest);
  at::Tensor sums = diffusion::empty_bound_sums(T, c10::kCPU);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t b0 = 0; b0 < count; b0 += o.batch) {
    const int64_t b = std::min(o.batch, count - b0);
    const at::Tensor x = read_images(shards, p, first + b0, b).to(m.device);
    at::Tensor y;
    if (m.shape.num_classes > 0) {
      std::vector<int64_t> labels;
      for (int64_t i = first + b0; i < first + b0 + b; ++i)
        labels.push_back(p.labels[static_cast<std::size_t>(p.indices[i])]);
      y = at::tensor(labels, at::kLong).to(m.device);
    }
    // One generator per image, drawn from T-1 down to 0 as calc_bpd_loop asks.
    std::vector<at::Generator> generators;
    for (int64_t i = first + b0; i < first + b0 + b; ++i)
      generators.push_back(train::cpu_generator(
          train::step_seed(o.seed, p.indices[i], train::RngStream::evaluation)));
    const auto noise = [&](long) {
      std::vector<at::Tensor> rows;
      for (const at::Generator& g : generators)
        rows.push_back(at::randn(x.sizes().slice(1), g, at::TensorOptions().dtype(at::kFloat)));
      return at::stack(rows).to(m.device);
    };
    const auto on_step = [&](long t) {
      if (progress && (t % 10 == 0 || t == T - 1))
        fmt::print(stderr, "\rimages {}-{} of {}: t = {:<8}", b0, b0 + b, count, t);
    };
    c10::InferenceMode guard;
    const diffusion::BoundTerms terms = diffusion::calc_bpd_loop(
        m.diffusion, m.denoiser.with_labels(y), x, /*clip_denoised=*/true, noise, on_step);
    sums += diffusion::bound_sums(terms).cpu();
    if (progress) fmt::print(stderr, "\r{:60}\r", "");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spdlog::info("evaluated {}/{} images ({:.1f} s, {:.2f} images/s); running bits/dim {:.4f}",
                 b0 + b, count, seconds, (b0 + b) / seconds,
                 sums[1].item<double>() / sums[0].item<double>());
  }
  return sums;
}

nlohmann::ordered_json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
}

void write_report(const Plan& p, const Options& o, const diffusion::BoundSummary& s, double seconds,
                  int ranks) {
  const TrainedModel& m = p.model;
  const long T = m.diffusion.num_timesteps;
  std::vector<int64_t> t(static_cast<std::size_t>(T));
  std::iota(t.begin(), t.end(), 0);
  nlohmann::ordered_json j{
      {"checkpoint", m.checkpoint},
      {"step", m.step},
      {"ema_rate", m.ema_rate ? nlohmann::ordered_json(*m.ema_rate) : nullptr},
      {"data", p.manifest.path},
      {"num_images", s.count},
      {"seed", o.seed},
      {"diffusion",
       {{"schedule", diffusion::to_string(m.config.diffusion.schedule)},
        {"steps", T},
        {"model_mean_type", diffusion::to_string(m.config.diffusion.model_mean_type)},
        {"model_var_type", diffusion::to_string(m.config.diffusion.model_var_type)},
        {"zero_terminal_snr", m.config.diffusion.zero_terminal_snr}}},
      {"clip_denoised", true},
      {"padded_to",
       m.config.data.pad_to > 0 ? nlohmann::ordered_json(m.shape.image_size) : nullptr},
      {"total_bpd", s.total_bpd},
      {"total_bpd_stderr", number_or_null(s.total_bpd_stderr)},
      {"prior_bpd", s.prior_bpd},
      {"decoder_bpd", s.decoder_bpd},
      {"terms_bpd", s.terms_bpd},
      {"per_timestep", {{"t", t}, {"vb_bpd", s.vb}, {"mse", s.mse}, {"xstart_mse", s.xstart_mse}}},
      {"seconds", seconds},
      {"ranks", ranks}};
  const std::string json_path = p.out + ".json", csv_path = p.out + ".csv";
  {
    std::ofstream f(json_path);
    f << j.dump(2) << "\n";
    if (!f) throw std::runtime_error(json_path + ": cannot write the report");
  }
  {
    std::ofstream f(csv_path);
    f << "t,vb_bpd,mse,xstart_mse\n";
    for (long k = 0; k < T; ++k)
      f << fmt::format("{},{:.10g},{:.10g},{:.10g}\n", k, s.vb[k], s.mse[k], s.xstart_mse[k]);
    if (!f) throw std::runtime_error(csv_path + ": cannot write the per-timestep terms");
  }
  std::vector<double> x(t.begin(), t.end());
  PlotOptions po;
  po.log_y = true;
  po.title =
      fmt::format("L_t (bits/dim) against t, step {}: total {:.4f} bits/dim", m.step, s.total_bpd);
  write_line_plot(p.out + ".png", x, {PlotSeries{s.vb}}, po);
}

int run(const Options& o, parallel::World& world) {
  const Plan plan = prepare(o, world);
  const TrainedModel& m = plan.model;
  const int64_t N = static_cast<int64_t>(plan.indices.size());
  spdlog::info("evaluating the bound on {} images of {} with {}, T = {}, {} rank(s), device {}", N,
               plan.manifest.path, describe(m), m.diffusion.num_timesteps, world.size(),
               m.device.str());

  // Past this point a failure on one rank would leave the others waiting in the reduction: it
  // ends the whole job (run_on_world aborts every rank).
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_communicator(world, m.device);
  const data::RowRange mine = data::rank_rows(N, world.rank(), world.size());
  const auto t0 = std::chrono::steady_clock::now();
  at::Tensor sums =
      evaluate_range(plan, o, mine.begin, mine.size(), world.rank() == 0 && isatty(STDERR_FILENO))
          .to(m.device);
  comm->all_reduce(sums, parallel::ReduceOp::sum);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (world.rank() != 0) return kOk;

  const diffusion::BoundSummary s = diffusion::summarize_bound(sums, m.diffusion.num_timesteps);
  fmt::print("bits/dim   {:.5f} +- {:.5f} (standard error, {} images)\n", s.total_bpd,
             s.total_bpd_stderr, s.count);
  fmt::print("  prior L_T            {:.6f}\n", s.prior_bpd);
  fmt::print("  sum L_t, t = 1..T-1  {:.6f}\n", s.terms_bpd);
  fmt::print("  decoder L_0          {:.6f}\n", s.decoder_bpd);
  try {
    write_report(plan, o, s, seconds, world.size());
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kBadInput;
  }
  spdlog::info("{:.1f} s ({:.2f} images/s); wrote {}.json, .csv, .png", seconds, N / seconds,
               plan.out);
  return kOk;
}

}  // namespace

void add_eval_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "The full variational bound in bits/dim on held-out data (JSON, CSV and PNG report)");
  add_model_source_options(*cmd, o->source);
  cmd->add_option("--data", o->data, "Held-out set: manifest.json or its directory")->required();
  cmd->add_option("--num", o->num, "Images to evaluate, a seeded random subset (default: all)");
  cmd->add_option("--batch", o->batch, "Images per network call on each rank");
  cmd->add_option("--seed", o->seed, "Seed of the subset and of the noise");
  cmd->add_option("--out", o->out,
                  "Report path FILE.json (also FILE.csv, FILE.png); default: "
                  "<run>/eval/bpd_step<step>.json");
  cmd->callback([o, &exit_code] {
    exit_code = run_on_world([&](parallel::World& world) { return run(*o, world); });
  });
}

}  // namespace difftrain::cli
