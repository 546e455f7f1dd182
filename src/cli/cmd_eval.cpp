// `difftrain eval`: the full variational bound in bits/dim on held-out data (cli/bound_eval.hpp),
// written as a JSON, CSV and PNG report. Under mpirun the images are split across ranks and the
// sums reduced; the result does not depend on --batch or the number of ranks.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "cli/bound_eval.hpp"
#include "cli/commands.hpp"
#include "cli/line_plot.hpp"
#include "cli/run_on_world.hpp"
#include "cli/trained_model.hpp"
#include "data/manifest.hpp"
#include "diffusion/bound_summary.hpp"
#include "parallel/communicator.hpp"
#include "parallel/world.hpp"

namespace difftrain::cli {
namespace {

namespace fs = std::filesystem;

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
  EvalImages images;
  std::string out;  // report path without extension
};

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
  const data::Manifest manifest = data::read_manifest(o.data);
  p.model = load_trained_model_on_rank(o.source, world, &manifest);
  const TrainedModel& m = p.model;
  p.images = choose_eval_images(manifest, m, o.num, o.seed);
  p.out = o.out.empty() ? default_out(m) : o.out;
  if (fs::path(p.out).extension() == ".json") p.out = fs::path(p.out).replace_extension().string();
  if (world.rank() == 0) check_output_directory(p.out, p.out + ".json");
  return p;
}

// Bits/dim over the model's dims -> over the real pixels' dims (cli/bound_eval.hpp).
double real_pixels_factor(const Plan& p) {
  return static_cast<double>(model_dims(p.model)) / static_cast<double>(real_dims(p.images));
}

nlohmann::ordered_json number_or_null(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
}

void write_report(const Plan& p, const Options& o, const BoundEvaluation& e, double seconds,
                  int ranks) {
  const TrainedModel& m = p.model;
  const diffusion::BoundSummary& s = e.summary;
  const long T = m.diffusion.num_timesteps;
  const double to_real = real_pixels_factor(p);
  std::vector<int64_t> t(static_cast<std::size_t>(T));
  std::iota(t.begin(), t.end(), 0);
  nlohmann::ordered_json j{
      {"checkpoint", m.checkpoint},
      {"step", m.step},
      {"ema_rate", m.ema_rate ? nlohmann::ordered_json(*m.ema_rate) : nullptr},
      {"data", p.images.manifest.path},
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
      // Every *_bpd below is averaged over `dims`, the model's (possibly padded) input.
      {"dims", model_dims(m)},
      {"total_bpd", s.total_bpd},
      {"total_bpd_stderr", number_or_null(s.total_bpd_stderr)},
      // The same bound over the `real_dims` of the data's images: equal without padding.
      {"real_dims", real_dims(p.images)},
      {"total_bpd_real_pixels", s.total_bpd * to_real},
      {"total_bpd_real_pixels_stderr", number_or_null(s.total_bpd_stderr * to_real)},
      {"prior_bpd", s.prior_bpd},
      {"decoder_bpd", s.decoder_bpd},
      {"terms_bpd", s.terms_bpd},
      // Paired comparisons of models evaluated with the same --seed need each image's total.
      {"per_image", {{"index", p.images.indices}, {"total_bpd", e.image_bpd}}},
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
  const auto N = static_cast<int64_t>(plan.images.indices.size());
  spdlog::info("evaluating the bound on {} images of {} with {}, T = {}, {} rank(s), device {}", N,
               plan.images.manifest.path, describe(m), m.diffusion.num_timesteps, world.size(),
               m.device.str());

  // Past this point a failure on one rank would leave the others waiting in the reduction: it
  // ends the whole job (run_on_world aborts every rank).
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_communicator(world, m.device);
  const auto t0 = std::chrono::steady_clock::now();
  const BoundEvaluation e = evaluate_bound(m, plan.images, o.batch, o.seed, *comm,
                                           world.rank() == 0 && isatty(STDERR_FILENO));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (world.rank() != 0) return kOk;

  const diffusion::BoundSummary& s = e.summary;
  const data::Manifest& d = plan.images.manifest;
  const int64_t S = m.shape.image_size;
  if (model_dims(m) == real_dims(plan.images)) {
    fmt::print("bits/dim   {:.5f} +- {:.5f} (standard error, {} images; {} dims, {}x{}x{})\n",
               s.total_bpd, s.total_bpd_stderr, s.count, model_dims(m), d.channels, d.height,
               d.width);
  } else {
    // A padded model: the bound per padded dim is not comparable with other models' bits/dim;
    // the one per real pixel dim is (an upper bound on the real pixels' NLL).
    const double to_real = real_pixels_factor(plan);
    fmt::print(
        "bits/dim, real pixels   {:.5f} +- {:.5f} (standard error, {} images; the bound over the "
        "{} dims of the {}x{}x{} images)\n",
        s.total_bpd * to_real, s.total_bpd_stderr * to_real, s.count, real_dims(plan.images),
        d.channels, d.height, d.width);
    fmt::print(
        "bits/dim, padded        {:.5f} +- {:.5f} (over the {} dims of the {}x{}x{} padded "
        "input, constant pad included; the terms below are per padded dim)\n",
        s.total_bpd, s.total_bpd_stderr, model_dims(m), m.shape.channels, S, S);
  }
  fmt::print("  prior L_T            {:.6f}\n", s.prior_bpd);
  fmt::print("  sum L_t, t = 1..T-1  {:.6f}\n", s.terms_bpd);
  fmt::print("  decoder L_0          {:.6f}\n", s.decoder_bpd);
  try {
    write_report(plan, o, e, seconds, world.size());
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
