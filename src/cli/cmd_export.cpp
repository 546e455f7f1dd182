// `difftrain export`: a checkpoint's weights (an EMA or the raw ones) as a state dict under
// improved-diffusion's parameter names, in PyTorch's .pt or in safetensors. Beside it, PATH.json
// says what the weights are (the model and diffusion, under improved-diffusion's script_util flags,
// the image_sample.py command line, what those flags cannot express) and, with --with-test-batch,
// PATH.test.pt holds the conformance vector.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/trained_model.hpp"
#include "model/parameter_count.hpp"
#include "weights/conformance.hpp"
#include "weights/improved_diffusion.hpp"
#include "weights/model_json.hpp"
#include "weights/pt_file.hpp"
#include "weights/safetensors_file.hpp"

namespace difftrain::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

struct Options {
  std::string run_dir, checkpoint, ema;
  std::string out;
  std::string format;  // pt | safetensors; "" = from --out's extension
  bool with_test_batch = false;
};

// out.pt -> out.pt, out.json, out.test.pt (and the same for .safetensors). An --out without the
// format's extension gets it appended.
struct OutputPaths {
  std::string format, weights, json, test_batch;
};

OutputPaths output_paths(const Options& o) {
  const fs::path out(o.out);
  const std::string ext = out.extension().string();
  const bool known_ext = ext == ".pt" || ext == ".safetensors";
  OutputPaths p;
  p.format = !o.format.empty() ? o.format : ext == ".safetensors" ? "safetensors" : "pt";
  if (known_ext && ext != "." + p.format)
    throw std::invalid_argument(
        fmt::format("--out {} ends in {} but --format is {}", o.out, ext, p.format));
  const std::string stem = known_ext ? (out.parent_path() / out.stem()).string() : o.out;
  p.weights = stem + "." + p.format;
  p.json = stem + ".json";
  p.test_batch = stem + ".test." + p.format;
  return p;
}

void save(const weights::StateDict& state, const std::string& path, const std::string& format,
          const TrainedModel& m) {
  if (format == "pt") return weights::save_pt(state, path);
  weights::save_safetensors(state, path,
                            {{"format", "pt"},  // the layout diffusers expects: PyTorch's
                             {"source", "difftrain"},
                             {"checkpoint", m.checkpoint},
                             {"step", std::to_string(m.step)}});
}

json export_json(const TrainedModel& m, const OutputPaths& p, const weights::StateDict& state,
                 const weights::ImprovedDiffusionFlags& flags, bool with_test_batch) {
  const auto& d = m.config.diffusion;
  json unexpressible = json::array();
  for (const auto& u : flags.unexpressible)
    unexpressible.push_back({{"key", u.key},
                             {"value", u.value},
                             {"affects", u.affects_sampling ? "sampling" : "training"},
                             {"reason", u.reason}});
  json j{{"weights", fs::path(p.weights).filename().string()},
         {"format", p.format},
         {"tensors", state.size()},
         {"parameters", model::parameter_count(m.denoiser.net)},
         {"source",
          {{"checkpoint", m.checkpoint},
           {"step", m.step},
           {"ema_rate", m.ema_rate ? json(*m.ema_rate) : json(nullptr)}}},
         {"model", weights::model_json(m.denoiser.net->config())},
         {"diffusion",
          {{"schedule", d.schedule},
           {"steps", d.steps},
           {"zero_terminal_snr", d.zero_terminal_snr},
           {"model_mean_type", d.model_mean_type},
           {"model_var_type", d.model_var_type},
           {"rescale_timesteps", d.rescale_timesteps},
           {"timestep_scale", m.denoiser.timestep_scale}}},
         {"improved_diffusion",
          {{"flags", flags.flags},
           {"can_sample", flags.can_sample()},
           // Only where improved-diffusion samples these weights as difftrain does, from a .pt
           // (its scripts read weights with torch.load).
           {"image_sample", flags.can_sample() && p.format == "pt"
                                ? json(weights::image_sample_command(flags, p.weights))
                                : json(nullptr)},
           {"not_expressible", unexpressible}}}};
  if (with_test_batch) j["test_batch"] = fs::path(p.test_batch).filename().string();
  return j;
}

int run(const Options& o) {
  const OutputPaths paths = output_paths(o);
  check_not_a_training_checkpoint(paths.weights, "--out");
  check_output_directory(paths.weights, "--out");
  ModelSource source{o.run_dir, o.checkpoint, o.ema, "cpu"};
  // On the CPU in fp32: the conformance vector must not depend on a GPU's kernels.
  TrainedModel m = load_trained_model(source, c10::kCPU);

  const weights::StateDict state = weights::state_dict_of(*m.denoiser.net);
  save(state, paths.weights, paths.format, m);
  spdlog::info("wrote {}: {} tensors, {} parameters from {}", paths.weights, state.size(),
               model::parameter_count(m.denoiser.net), describe(m));

  const auto flags = weights::improved_diffusion_flags(m.config, m.denoiser.net->config());
  if (o.with_test_batch) {
    const weights::StateDict batch =
        weights::conformance_batch(m.denoiser, m.diffusion.num_timesteps);
    save(batch, paths.test_batch, paths.format, m);
    spdlog::info("wrote {}: the conformance vector (x, t as the network sees it{}, out)",
                 paths.test_batch, m.denoiser.net->config().num_classes > 0 ? ", y" : "");
  }
  std::ofstream(paths.json) << export_json(m, paths, state, flags, o.with_test_batch).dump(2)
                            << '\n';
  spdlog::info("wrote {}", paths.json);
  for (const auto& u : flags.unexpressible)
    spdlog::warn("improved-diffusion cannot express {} = {} ({}){}", u.key, u.value, u.reason,
                 u.affects_sampling ? "" : "; training only, sampling is the same");
  if (!flags.can_sample())
    spdlog::warn(
        "improved-diffusion cannot sample these weights as difftrain does; its UNet "
        "names still match (the .json says what differs)");
  else if (paths.format == "pt")
    spdlog::info("sample with improved-diffusion:\n  {}",
                 weights::image_sample_command(flags, paths.weights));
  else
    spdlog::info(
        "improved-diffusion reads .pt files (torch.load): export with --format pt to "
        "sample with its scripts/image_sample.py");
  return kOk;
}

}  // namespace

void add_export_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "export",
      "Write a checkpoint's weights as a PyTorch .pt or safetensors state dict with "
      "improved-diffusion's names");
  auto* run_opt =
      cmd->add_option("--run", o->run_dir, "Run directory: its newest valid checkpoint is used");
  auto* ckpt = cmd->add_option("--checkpoint", o->checkpoint, "Checkpoint file (.pt)");
  run_opt->excludes(ckpt);
  ckpt->excludes(run_opt);
  cmd->add_option("--ema", o->ema,
                  "EMA rate whose weights to export, or 'none' for the raw weights (default: the "
                  "first of the config's training.ema_rates)");
  cmd->add_option("--out", o->out,
                  "Weights file: PATH.pt or PATH.safetensors; PATH.json is written beside it")
      ->required();
  cmd->add_option("--format", o->format, "pt or safetensors (default: from --out's extension)")
      ->check(CLI::IsMember({"pt", "safetensors"}));
  cmd->add_flag("--with-test-batch", o->with_test_batch,
                "Also write PATH.test.pt (or .safetensors): a fixed input and difftrain's output");
  cmd->callback([o, &exit_code] { exit_code = run(*o); });
}

}  // namespace difftrain::cli
