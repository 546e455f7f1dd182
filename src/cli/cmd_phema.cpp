// `difftrain phema`: post-hoc EMA (train/phema.hpp, docs/phema.md). From the snapshots a run
// wrote under RUN/phema/, reconstructs the average of the weights for any relative width sigma_rel
// at a snapshot's step and writes it as a checkpoint that `sample` and `eval` take through
// --checkpoint; or sweeps a range of sigma_rel, evaluating the full bound of each
// (cli/bound_eval.hpp), and names the best.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <regex>
#include <stdexcept>

#include "cli/bound_eval.hpp"
#include "cli/commands.hpp"
#include "cli/line_plot.hpp"
#include "cli/run_on_world.hpp"
#include "cli/trained_model.hpp"
#include "data/manifest.hpp"
#include "parallel/communicator.hpp"
#include "parallel/rank_device.hpp"
#include "parallel/world.hpp"
#include "train/checkpoint.hpp"
#include "train/phema.hpp"
#include "train/phema_reconstruct.hpp"

namespace difftrain::cli {
namespace {

namespace fs = std::filesystem;
namespace phema = train::phema;

struct Options {
  std::string run_dir;
  std::vector<double> sigma_rels;
  std::vector<double> input_sigma_rels;  // empty: every tracked profile
  std::optional<int64_t> step;           // default: the last snapshot
  int64_t step_given = 0;                // --step as parsed
  std::string out;
  // --sweep LO:HI:N and the evaluation of each point.
  std::string sweep;
  std::string eval_data;
  int64_t num = 0;
  int64_t batch = 16;
  uint64_t seed = 0;
  std::string report;
  std::string device = "auto";
};

std::string sigma_str(double sigma_rel) {
  return fmt::format("{}", sigma_rel);
}

void check_sigma_rel(const std::string& option, double sigma_rel) {
  if (!(sigma_rel > 0 && sigma_rel < phema::kMaxSigmaRel))
    throw std::invalid_argument(
        fmt::format("{} {} is outside (0, 0.2887): wider averages have no power-function profile",
                    option, sigma_rel));
}

// LO:HI:N -> N values evenly spaced from LO to HI.
std::vector<double> parse_sweep(const std::string& spec) {
  static const std::regex form(R"(([0-9.eE+-]+):([0-9.eE+-]+):([0-9]+))");
  std::smatch m;
  const std::string rule =
      "--sweep '" + spec + "' must be LO:HI:N with 0 < LO < HI < 0.2887 and N >= 2 values";
  if (!std::regex_match(spec, m, form)) throw std::invalid_argument(rule);
  double lo = 0, hi = 0;
  int64_t n = 0;
  try {
    lo = std::stod(m[1].str());
    hi = std::stod(m[2].str());
    n = std::stoll(m[3].str());
  } catch (const std::exception&) {
    throw std::invalid_argument(rule);
  }
  if (!(lo > 0 && lo < hi && hi < phema::kMaxSigmaRel && n >= 2)) throw std::invalid_argument(rule);
  std::vector<double> values;
  for (int64_t i = 0; i < n; ++i) {
    const double v = lo + (hi - lo) * static_cast<double>(i) / static_cast<double>(n - 1);
    values.push_back(std::round(v * 1e12) / 1e12);  // 0.06, not 0.060000000000000005
  }
  return values;
}

// PATH for one output; PATH with _sigma<S> before its extension for each of several.
std::string output_path(const std::string& out, double sigma_rel, bool several) {
  if (!several) return out;
  const fs::path p(out);
  return (p.parent_path() /
          (p.stem().string() + "_sigma" + sigma_str(sigma_rel) + p.extension().string()))
      .string();
}

void print_plan(const phema::Plan& plan, const std::string& run_dir) {
  std::vector<double> tracked;
  for (const phema::Input& in : plan.inputs) {
    const double s = plan.snapshots[in.snapshot].sigma_rels[in.profile];
    if (std::find(tracked.begin(), tracked.end(), s) == tracked.end()) tracked.push_back(s);
  }
  fmt::print(
      "post-hoc EMA of {} at step {} ({} images), from {} profiles (sigma_rel {}) of {} "
      "snapshots, steps {}-{}\n",
      run_dir, plan.step, plan.images, plan.inputs.size(), phema::format_sigma_rels(tracked),
      plan.snapshots.size(), plan.snapshots.front().step, plan.step);
}

void print_solution(const phema::Plan& plan, const phema::Reconstruction& r) {
  fmt::print(
      "sigma_rel {} (gamma {:.4f}): residual ||A x - B|| / ||B|| = {:.3e}, profile "
      "error ||sum x_i p_i - p|| / ||p|| = {:.3e}\n",
      r.sigma_rel, r.gamma, r.solution.residual, r.solution.profile_error);
  fmt::print("  {:>10}  {:>9}  {:>14}\n", "step", "sigma_rel", "coefficient");
  for (std::size_t i = 0; i < plan.inputs.size(); ++i) {
    const phema::Input& in = plan.inputs[i];
    const phema::Snapshot& s = plan.snapshots[in.snapshot];
    fmt::print("  {:>10}  {:>9}  {:>14.6e}\n", s.step, s.sigma_rels[in.profile],
               r.solution.coefficients[i]);
  }
}

void write_checkpoint(const std::string& path, const phema::Plan& plan,
                      const phema::Reconstruction& r) {
  train::save_weights_checkpoint(path, r.model_state, plan.step,
                                 phema::reconstruction_config_yaml(plan.config_yaml));
}

int reconstruct_to_files(const Options& o) {
  if (o.out.empty()) throw std::invalid_argument("--sigma-rel needs --out PATH");
  for (double s : o.sigma_rels)
    check_sigma_rel("--sigma-rel", s);
  for (double s : o.input_sigma_rels)
    check_sigma_rel("--input-sigma-rel", s);
  const bool several = o.sigma_rels.size() > 1;
  for (double s : o.sigma_rels) {
    const std::string path = output_path(o.out, s, several);
    check_not_a_training_checkpoint(path, "--out");
    check_output_directory(path, path);
  }
  const phema::Plan plan = phema::plan_reconstruction(o.run_dir, o.step, o.input_sigma_rels);
  print_plan(plan, o.run_dir);
  for (const phema::Reconstruction& r : phema::reconstruct(plan, o.sigma_rels)) {
    print_solution(plan, r);
    const std::string path = output_path(o.out, r.sigma_rel, several);
    write_checkpoint(path, plan, r);
    fmt::print("wrote {} (sample / eval it with --checkpoint {})\n", path, path);
  }
  return kOk;
}

struct SweepPoint {
  double sigma_rel = 0, gamma = 0, profile_error = 0;
  diffusion::BoundSummary bound;
};

void write_sweep_report(const std::string& prefix, const std::vector<SweepPoint>& points,
                        std::size_t best, int64_t step) {
  const std::string csv = prefix + ".csv";
  {
    std::ofstream f(csv);
    f << "sigma_rel,gamma,bits_per_dim,standard_error,profile_error\n";
    for (const SweepPoint& p : points)
      f << fmt::format("{:.10g},{:.10g},{:.10g},{:.10g},{:.10g}\n", p.sigma_rel, p.gamma,
                       p.bound.total_bpd, p.bound.total_bpd_stderr, p.profile_error);
    if (!f) throw std::runtime_error(csv + ": cannot write the sweep table");
  }
  std::vector<double> x, y;
  for (const SweepPoint& p : points) {
    x.push_back(p.sigma_rel);
    y.push_back(p.bound.total_bpd);
  }
  PlotOptions po;
  po.title = fmt::format("bits/dim against sigma_rel, step {}: best {} ({:.4f} bits/dim)", step,
                         sigma_str(points[best].sigma_rel), points[best].bound.total_bpd);
  write_line_plot(prefix + ".png", x, {PlotSeries{y}}, po);
}

int sweep(const Options& o, parallel::World& world) {
  if (o.eval_data.empty()) throw std::invalid_argument("--sweep needs --eval MANIFEST");
  if (o.num < 0) throw std::invalid_argument("--num must be >= 0 (0 = all images)");
  if (o.batch < 1)
    throw std::invalid_argument("--batch must be >= 1, not " + std::to_string(o.batch));
  for (double s : o.input_sigma_rels)
    check_sigma_rel("--input-sigma-rel", s);
  const std::vector<double> grid = parse_sweep(o.sweep);
  const bool root = world.rank() == 0;
  const c10::Device device = parallel::rank_device(world, parallel::parse_device_request(o.device));
  const data::Manifest manifest = data::read_manifest(o.eval_data);
  const phema::Plan plan = phema::plan_reconstruction(o.run_dir, o.step, o.input_sigma_rels);
  const std::string prefix =
      !o.report.empty()
          ? fs::path(o.report).replace_extension().string()
          : (fs::path(o.run_dir) / "eval" / fmt::format("phema_sweep_step{}", plan.step)).string();
  if (root) {
    check_output_directory(prefix, prefix + ".csv");
    if (!o.out.empty()) {
      check_not_a_training_checkpoint(o.out, "--out");
      check_output_directory(o.out, o.out);
    }
    print_plan(plan, o.run_dir);
  }

  // Past this point a failure on one rank would leave the others waiting in a collective: it ends
  // the whole job (run_on_world aborts every rank).
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_communicator(world, device);
  const bool progress = root && isatty(STDERR_FILENO);
  std::vector<SweepPoint> points;
  std::optional<EvalImages> images;
  std::size_t best = 0;
  const auto checkpoint_of = [&](double s) { return prefix + "_sigma" + sigma_str(s) + ".pt"; };
  for (double sigma_rel : grid) {
    // Rank 0 reconstructs and writes the checkpoint every rank then evaluates.
    SweepPoint point{sigma_rel, phema::sigma_rel_to_gamma(sigma_rel), 0, {}};
    const std::string path = checkpoint_of(sigma_rel);
    if (root) {
      const phema::Reconstruction r = phema::reconstruct(plan, {sigma_rel}).front();
      point.profile_error = r.solution.profile_error;
      write_checkpoint(path, plan, r);
    }
    comm->barrier();
    ModelSource source;
    source.checkpoint = path;
    source.ema = "none";
    source.device = o.device;
    const TrainedModel m = load_trained_model_on_rank(source, world, &manifest);
    if (!images) images = choose_eval_images(manifest, m, o.num, o.seed);
    point.bound = evaluate_bound(m, *images, o.batch, o.seed, *comm, progress).summary;
    points.push_back(point);
    if (!root) continue;
    fmt::print("sigma_rel {:<8} bits/dim {:.5f} +- {:.5f} (profile error {:.2e})\n",
               sigma_str(sigma_rel), point.bound.total_bpd, point.bound.total_bpd_stderr,
               point.profile_error);
    // Only the best checkpoint so far is kept (every rank has loaded this one: the bound's
    // reduction is behind them).
    const std::size_t i = points.size() - 1;
    if (i > 0 && point.bound.total_bpd < points[best].bound.total_bpd) {
      fs::remove(checkpoint_of(points[best].sigma_rel));
      best = i;
    } else if (i > 0) {
      fs::remove(path);
    }
  }
  if (!root) return kOk;

  write_sweep_report(prefix, points, best, plan.step);
  std::string kept = checkpoint_of(points[best].sigma_rel);
  if (!o.out.empty()) {
    fs::copy_file(kept, o.out, fs::copy_options::overwrite_existing);
    fs::remove(kept);
    kept = o.out;
  }
  fmt::print(
      "best sigma_rel {} (gamma {:.4f}): {:.5f} +- {:.5f} bits/dim on {} images; its "
      "checkpoint: {}\n",
      sigma_str(points[best].sigma_rel), points[best].gamma, points[best].bound.total_bpd,
      points[best].bound.total_bpd_stderr, points[best].bound.count, kept);
  spdlog::info("wrote {}.csv and {}.png", prefix, prefix);
  return kOk;
}

}  // namespace

void add_phema_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "phema",
      "Post-hoc EMA: reconstruct the average of any relative width sigma_rel from a run's "
      "snapshots (a checkpoint), or sweep sigma_rel against bits/dim");
  cmd->add_option("--run", o->run_dir, "Run directory (its snapshots are in RUN/phema/)")
      ->required();
  auto* sigma = cmd->add_option("--sigma-rel", o->sigma_rels,
                                "Relative width to reconstruct, in (0, 0.2887) (repeatable)");
  auto* step_option = cmd->add_option(
      "--step", o->step_given, "Snapshot step to reconstruct at (default: the last snapshot)");
  cmd->add_option("--out", o->out,
                  "Checkpoint to write (several --sigma-rel: PATH_sigma<S>.pt each); with "
                  "--sweep, where to put the best one");
  cmd->add_option("--input-sigma-rel", o->input_sigma_rels,
                  "Use only the tracked profiles of this sigma_rel (repeatable; default: all)");
  auto* sweep_option =
      cmd->add_option("--sweep", o->sweep,
                      "LO:HI:N: N sigma_rel evenly spaced from LO to HI, each evaluated on --eval");
  sigma->excludes(sweep_option);
  sweep_option->excludes(sigma);
  cmd->add_option("--eval", o->eval_data,
                  "With --sweep: held-out set, manifest.json or its "
                  "directory");
  cmd->add_option("--num", o->num, "With --sweep: images, a seeded random subset (default: all)");
  cmd->add_option("--batch", o->batch, "With --sweep: images per network call on each rank");
  cmd->add_option("--seed", o->seed, "With --sweep: seed of the subset and of the noise");
  cmd->add_option("--report", o->report,
                  "With --sweep: table and plot path FILE.csv (also FILE.png); default: "
                  "RUN/eval/phema_sweep_step<step>.csv");
  cmd->add_option("--device", o->device,
                  "With --sweep: auto (a GPU per local rank when there are GPUs), cpu, cuda or "
                  "cuda:N")
      ->default_val("auto");
  cmd->callback([o, step_option, cmd, &exit_code] {
    if (step_option->count() > 0) o->step = o->step_given;
    if (!o->sweep.empty()) {
      exit_code = run_on_world([&](parallel::World& world) { return sweep(*o, world); });
      return;
    }
    for (const char* option : {"--eval", "--num", "--batch", "--seed", "--report"})
      if (cmd->count(option) > 0)
        throw std::invalid_argument(std::string(option) + " goes with --sweep");
    if (o->sigma_rels.empty())
      throw std::invalid_argument("give --sigma-rel S (repeatable) or --sweep LO:HI:N");
    exit_code = reconstruct_to_files(*o);
  });
}

}  // namespace difftrain::cli
