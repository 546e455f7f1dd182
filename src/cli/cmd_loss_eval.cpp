// `difftrain loss-eval`: evaluates the loss terms on recorded inputs (golden README layouts) so
// that the loss can be compared with any other implementation.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <optional>
#include <vector>

#include "cli/commands.hpp"
#include "data/h5_tensor.hpp"
#include "diffusion/bound.hpp"
#include "diffusion/gaussian_diffusion.hpp"

namespace difftrain::cli {
namespace {

using diffusion::GaussianDiffusion;

struct Options {
  std::string cases;
  std::string out;
  bool check = false;
  std::string dtype = "float64";
};

// |got - expected| <= atol * scale + rtol * |expected| (golden README §5 and §6).
struct Tolerance {
  double atol;
  double rtol;
};

void expect_shape(const h5::File& f, const std::string& name, const std::vector<int64_t>& want) {
  const auto got = f.shape(name);
  if (got != want)
    f.fail("dataset '" + name + "' has shape " + fmt::format("{}", got) + ", expected " +
           fmt::format("{}", want));
}

// Parses a root attribute with one of the diffusion parsers, naming the file on failure.
template <typename Parse>
auto parse_attr(const h5::File& f, const std::string& name, Parse parse) {
  const std::string value = f.attr_string(name);
  try {
    return parse(value);
  } catch (const std::invalid_argument& e) {
    f.fail(std::string("attribute '") + name + "': " + e.what());
  }
}

GaussianDiffusion diffusion_from_attrs(const h5::File& f) {
  const auto schedule = parse_attr(f, "schedule", diffusion::parse_beta_schedule);
  const auto mean_type = parse_attr(f, "model_mean_type", diffusion::parse_model_mean_type);
  const auto var_type = parse_attr(f, "model_var_type", diffusion::parse_model_var_type);
  const int64_t steps = f.attr_int("steps");
  try {
    return diffusion::make_gaussian_diffusion(schedule, steps, mean_type, var_type);
  } catch (const std::invalid_argument& e) {
    f.fail(e.what());
  }
}

// The sample layout shared by both file kinds: x_start [N, C, ...] and checks on t.
void check_timesteps(const h5::File& f, const at::Tensor& t, int64_t T) {
  if (t.numel() > 0 && (t.min().item<int64_t>() < 0 || t.max().item<int64_t>() >= T))
    f.fail("dataset 't' has values outside [0, " + std::to_string(T - 1) + "]");
}

std::vector<int64_t> output_shape(const GaussianDiffusion& d, std::vector<int64_t> x_shape,
                                  std::optional<int64_t> leading = std::nullopt) {
  if (diffusion::is_learned(d.model_var_type)) x_shape[1] *= 2;
  if (leading) x_shape.insert(x_shape.begin(), *leading);
  return x_shape;
}

struct Result {
  std::string name;
  at::Tensor got;  // float64
  double scale = 1.0;
};

// Writes the results to `out` through a temporary file, so a kill leaves no partial output.
void write_results(const std::string& out, const std::vector<Result>& results) {
  const std::string tmp = out + ".tmp";
  {
    h5::File f = h5::File::create(tmp);
    for (const Result& r : results)
      h5::write_tensor(f, r.name, r.got.to(at::kDouble));
    f.set_attr("description", std::string("difftrain loss-eval output"));
  }
  std::filesystem::rename(tmp, out);
}

// Compares with expected_<name>; prints the worst error as a fraction of the tolerance.
bool check_results(const h5::File& f, const std::vector<Result>& results, Tolerance tol) {
  bool all_ok = true;
  for (const Result& r : results) {
    const std::string name = "expected_" + r.name;
    if (!f.has(name)) {
      spdlog::warn("{}: no '{}' to check against", f.path(), name);
      continue;
    }
    const auto want = f.shape(name);
    if (want != std::vector<int64_t>(r.got.sizes().begin(), r.got.sizes().end()))
      f.fail("dataset '" + name + "' has shape " + fmt::format("{}", want) + ", expected " +
             c10::str(r.got.sizes()));
    const at::Tensor expected = h5::read_tensor(f, name, at::kDouble);
    const at::Tensor bound = tol.atol * r.scale + tol.rtol * expected.abs();
    const at::Tensor ratio = (r.got.to(at::kDouble) - expected).abs() / bound;
    const int64_t worst = ratio.flatten().argmax().item<int64_t>();
    const double worst_ratio = ratio.flatten()[worst].item<double>();
    const bool ok = !(worst_ratio > 1.0);  // NaN fails
    all_ok = all_ok && ok;
    fmt::print(
        "{:<12} worst error {:.3g} of tolerance (element {}: got {:.10g}, expected {:.10g}) {}\n",
        r.name, worst_ratio, worst, r.got.flatten()[worst].item<double>(),
        expected.flatten()[worst].item<double>(), ok ? "ok" : "FAIL");
  }
  return all_ok;
}

int eval_per_sample(const h5::File& f, const Options& o, c10::ScalarType dtype) {
  const GaussianDiffusion d = diffusion_from_attrs(f);
  const auto loss_type = parse_attr(f, "loss_type", diffusion::parse_loss_type);
  const auto x_shape = f.shape("x_start");
  if (x_shape.size() < 2)
    f.fail("dataset 'x_start' must be [N, C, ...], got " + fmt::format("{}", x_shape));
  const int64_t N = x_shape[0];
  expect_shape(f, "noise", x_shape);
  expect_shape(f, "t", {N});
  expect_shape(f, "model_output", output_shape(d, x_shape));

  const at::Tensor x_start = h5::read_tensor(f, "x_start", dtype);
  const at::Tensor noise = h5::read_tensor(f, "noise", dtype);
  const at::Tensor t = h5::read_tensor(f, "t", at::kLong);
  const at::Tensor model_output = h5::read_tensor(f, "model_output", dtype);
  check_timesteps(f, t, d.num_timesteps);

  const diffusion::LossSpec spec =
      diffusion::loss_spec(loss_type, d.model_var_type, d.num_timesteps);
  const at::Tensor x_t = diffusion::q_sample(d, x_start, t, noise);
  const auto terms = diffusion::training_terms(d, spec, model_output, x_start, x_t, t, noise);

  // The scale s of §5: the rescale factor of the vb term for rescaled loss types.
  const double T = static_cast<double>(d.num_timesteps);
  const double vb_scale = loss_type == diffusion::LossType::rescaled_kl    ? T
                          : loss_type == diffusion::LossType::rescaled_mse ? T / 1000.0
                                                                           : 1.0;
  const std::vector<Result> results{{"mse", terms.mse, 1.0},
                                    {"vb", terms.vb, vb_scale},
                                    {"loss", terms.loss, vb_scale},
                                    {"vb_bits_raw", terms.vb_bits, 1.0}};
  if (!o.out.empty()) write_results(o.out, results);
  if (!o.check) return kOk;
  const Tolerance tol = dtype == at::kFloat ? Tolerance{1e-4, 1e-3} : Tolerance{1e-9, 1e-7};
  return check_results(f, results, tol) ? kOk : kCheckFailed;
}

int eval_full_bound(const h5::File& f, const Options& o, c10::ScalarType dtype) {
  const GaussianDiffusion d = diffusion_from_attrs(f);
  const int64_t T = d.num_timesteps;
  const bool clip_denoised = f.attr_int("clip_denoised") != 0;
  const auto x_shape = f.shape("x_start");
  if (x_shape.size() < 2)
    f.fail("dataset 'x_start' must be [N, C, ...], got " + fmt::format("{}", x_shape));
  std::vector<int64_t> noise_shape = x_shape;
  noise_shape.insert(noise_shape.begin(), T);
  expect_shape(f, "noise", noise_shape);
  expect_shape(f, "model_output", output_shape(d, x_shape, T));

  const at::Tensor x_start = h5::read_tensor(f, "x_start", dtype);
  const at::Tensor noise = h5::read_tensor(f, "noise", dtype);
  const at::Tensor recorded = h5::read_tensor(f, "model_output", dtype);
  // The recorded outputs stand in for the network evaluated at each timestep.
  const diffusion::ModelFn model = [&](const at::Tensor&, const at::Tensor& t) {
    return recorded[t[0].item<int64_t>()];
  };
  const auto b =
      diffusion::calc_bpd_loop(d, model, x_start, clip_denoised, [&](long t) { return noise[t]; });
  const std::vector<Result> results{{"vb", b.vb},
                                    {"mse", b.mse},
                                    {"xstart_mse", b.xstart_mse},
                                    {"prior_bpd", b.prior_bpd},
                                    {"total_bpd", b.total_bpd}};
  if (!o.out.empty()) write_results(o.out, results);
  if (!o.check) return kOk;
  const Tolerance tol = dtype == at::kFloat ? Tolerance{1e-4, 1e-3} : Tolerance{1e-7, 1e-6};
  return check_results(f, results, tol) ? kOk : kCheckFailed;
}

int run(const Options& o) {
  const c10::ScalarType dtype = o.dtype == "float32" ? at::kFloat : at::kDouble;
  try {
    const h5::File f = h5::File::open(o.cases);
    if (!f.has("noise"))
      f.fail(
          "not a loss-eval case file: no dataset 'noise' (expected the per-sample or the "
          "full-bound layout of the golden README)");
    const std::size_t noise_dims = f.shape("noise").size();
    if (noise_dims == 5) return eval_full_bound(f, o, dtype);
    if (!f.has("t"))
      f.fail("not in the per-sample layout: missing dataset 't' (and 'noise' has " +
             std::to_string(noise_dims) + " dimensions, not the 5 of the full-bound layout)");
    return eval_per_sample(f, o, dtype);
  } catch (const h5::Error& e) {
    spdlog::error("{}", e.what());
    return kBadInput;
  } catch (const std::filesystem::filesystem_error& e) {
    spdlog::error("{}: {}", o.out, e.what());
    return kBadInput;
  }
}

}  // namespace

void add_loss_eval_command(CLI::App& app, int& exit_code) {
  auto opts = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "loss-eval", "Evaluate the loss terms on recorded inputs (golden-reference HDF5 layout)");
  cmd->add_option("--cases", opts->cases, "HDF5 file of recorded inputs")->required();
  cmd->add_option("--out", opts->out, "HDF5 file to write the computed terms to");
  cmd->add_flag("--check", opts->check,
                "Compare with the file's expected_* datasets; exit 1 when out of tolerance");
  cmd->add_option("--dtype", opts->dtype, "Compute precision")
      ->check(CLI::IsMember({"float32", "float64"}));
  cmd->callback([opts, &exit_code] { exit_code = run(*opts); });
}

}  // namespace difftrain::cli
