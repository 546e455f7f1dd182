// `difftrain sample`: images from a trained model with ancestral (DDPM), DDIM or DPM-Solver++
// sampling, optionally on a respaced schedule, guided by a label (classifier-free) or a noisy
// classifier, written as a PNG grid, an HDF5 shard and a NumPy .npz. An upsampler upsamples the
// images of --low-res, sample i the (i mod n)-th of its n images, as super_res_sample.py cycles.
// Under mpirun every rank samples its share and rank 0 writes them all. Sample i is drawn from
// generators seeded by (--seed, i) alone, so the images do not depend on --batch or the number
// of ranks.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.hpp"
#include "cli/low_res_images.hpp"
#include "cli/run_on_world.hpp"
#include "cli/trained_model.hpp"
#include "data/canvas.hpp"
#include "data/npz.hpp"
#include "data/png_grid.hpp"
#include "data/sample_order.hpp"
#include "data/shard_writer.hpp"
#include "diffusion/gaussian_diffusion.hpp"
#include "diffusion/respace.hpp"
#include "diffusion/sampling.hpp"
#include "parallel/communicator.hpp"
#include "parallel/world.hpp"
#include "train/step_rng.hpp"

namespace difftrain::cli {
namespace {

namespace fs = std::filesystem;

struct Options {
  ModelSource source;
  int64_t num = 0;
  std::string out;
  diffusion::Sampler sampler = diffusion::Sampler::ddpm;
  int64_t steps = 0;  // 0: not given, the sampler's default
  bool steps_given = false;
  std::string respacing;
  double eta = 0.0;
  bool eta_given = false;
  uint64_t seed = 0;
  int64_t label = -1;             // --class; -1 = every class in turn
  double guidance_scale = 1.0;    // classifier-free guidance; 1 = the conditional model as trained
  double guidance_rescale = 0.0;  // Lin et al.'s phi; 0 = off
  std::string classifier;         // classifier guidance: a run directory or checkpoint
  double classifier_scale = 1.0;
  std::string low_res;         // an upsampler's input images: a shard file or set
  double low_res_noise = 0.0;  // a noise-conditioned upsampler's level, a fraction of T
  bool low_res_noise_given = false;
  int64_t batch = 64;
};

// Everything checked before any sampling starts.
struct Plan {
  TrainedModel model;
  std::optional<TrainedClassifier> classifier;  // --classifier
  std::optional<LowResImages> low_res;          // --low-res, for an upsampler
  int64_t classes = 0;                     // of the labels drawn: the model's, or the classifier's
  diffusion::GaussianDiffusion diffusion;  // the one sampled: respaced or the training one
  at::Tensor timestep_map;                 // its index -> training timestep; undefined = same
  std::string schedule;                    // for logs and the shard's source attribute
  data::Canvas canvas;  // the samples' place in the network's output: cropped back from padding
  std::string out;      // output path without extension
};

std::string strip_extension(const std::string& out) {
  const fs::path p(out);
  const std::string ext = p.extension().string();
  if (ext == ".png" || ext == ".h5" || ext == ".npz") return (p.parent_path() / p.stem()).string();
  return out;
}

void check_options(const Options& o) {
  if (o.num < 1) throw std::invalid_argument("--num must be >= 1, not " + std::to_string(o.num));
  if (o.batch < 1)
    throw std::invalid_argument("--batch must be >= 1, not " + std::to_string(o.batch));
  if (o.eta_given && o.sampler != diffusion::Sampler::ddim)
    throw std::invalid_argument("--eta applies to --sampler ddim only");
  if (o.eta < 0) throw std::invalid_argument("--eta must be >= 0, not " + fmt::format("{}", o.eta));
  if (o.steps_given && o.steps < 1)
    throw std::invalid_argument("--steps must be >= 1, not " + std::to_string(o.steps));
  if (!(o.guidance_scale >= 0))
    throw std::invalid_argument("--guidance-scale must be >= 0, not " +
                                fmt::format("{}", o.guidance_scale));
  if (!(o.guidance_rescale >= 0 && o.guidance_rescale <= 1))
    throw std::invalid_argument("--guidance-rescale must be in [0, 1], not " +
                                fmt::format("{}", o.guidance_rescale));
  if (!(o.classifier_scale >= 0))
    throw std::invalid_argument("--classifier-scale must be >= 0, not " +
                                fmt::format("{}", o.classifier_scale));
  if (o.guidance_rescale > 0 && (o.guidance_scale == 0 || o.guidance_scale == 1))
    throw std::invalid_argument(fmt::format(
        "--guidance-rescale {} rescales a guided prediction: give --guidance-scale other than 0 "
        "and 1 (now {})",
        o.guidance_rescale, o.guidance_scale));
}

// --respacing, else --steps K as "K", else every step (ddpm), 50 (ddim) or 20 (dpm++2m).
std::string respacing_spec(const Options& o, long T) {
  if (!o.respacing.empty()) return o.respacing;
  if (o.steps > 0) return std::to_string(o.steps);
  using diffusion::Sampler;
  const long default_steps = o.sampler == Sampler::ddim            ? 50
                             : o.sampler == Sampler::dpm_solver_2m ? 20
                                                                   : T;
  return T > default_steps ? std::to_string(default_steps) : "";
}

// A classifier guides a model only where it was trained: on images of the model's shape, noised
// by the same forward process, with the same classes when the model is class-conditional.
void check_classifier_fits(const TrainedClassifier& c, const TrainedModel& m) {
  if (c.shape.image_size != m.shape.image_size || c.shape.channels != m.shape.channels)
    throw std::invalid_argument(
        fmt::format("--classifier {}: classifies {}x{}x{} images, the model draws {}x{}x{}",
                    c.checkpoint, c.shape.channels, c.shape.image_size, c.shape.image_size,
                    m.shape.channels, m.shape.image_size, m.shape.image_size));
  if (c.diffusion.num_timesteps != m.diffusion.num_timesteps ||
      !at::allclose(c.diffusion.alphas_cumprod, m.diffusion.alphas_cumprod, 1e-9, 1e-12))
    throw std::invalid_argument(fmt::format(
        "--classifier {}: trained on another forward process ({} schedule, T = {}) than the "
        "model's ({} schedule, T = {}): its p(y | x_t) does not apply",
        c.checkpoint, diffusion::to_string(c.config.diffusion.schedule), c.diffusion.num_timesteps,
        diffusion::to_string(m.config.diffusion.schedule), m.diffusion.num_timesteps));
  if (m.shape.num_classes > 0 && m.shape.num_classes != c.shape.num_classes)
    throw std::invalid_argument(
        fmt::format("--classifier {}: has {} classes, the class-conditional model {}", c.checkpoint,
                    c.shape.num_classes, m.shape.num_classes));
}

Plan prepare(const Options& o, const parallel::World& world) {
  check_options(o);
  Plan p;
  p.model = load_trained_model_on_rank(o.source, world);
  const TrainedModel& m = p.model;

  const long T = m.diffusion.num_timesteps;
  const std::string spec = respacing_spec(o, T);
  if (spec.empty()) {
    p.diffusion = m.diffusion;
    p.schedule = fmt::format("{} steps", T);
  } else {
    diffusion::RespacedDiffusion r =
        diffusion::respace(m.diffusion, diffusion::space_timesteps(T, spec));
    p.schedule = fmt::format("respaced '{}': {} of {} steps", spec, r.diffusion.num_timesteps, T);
    p.diffusion = std::move(r.diffusion);
    p.timestep_map = r.timestep_map;
  }

  p.classes = m.shape.num_classes;
  if (!o.classifier.empty()) {
    p.classifier = load_trained_classifier(o.classifier, m.device);
    check_classifier_fits(*p.classifier, m);
    p.classes = p.classifier->shape.num_classes;
  }
  const int64_t classes = p.classes;
  if (o.label >= 0 && classes == 0)
    throw std::invalid_argument("--class " + std::to_string(o.label) + ": " + m.checkpoint +
                                " is an unconditional model (and no --classifier guides it)");
  if (o.label >= classes && classes > 0)
    throw std::invalid_argument("--class " + std::to_string(o.label) + " is outside [0, " +
                                std::to_string(classes) + ")");
  const int64_t low_res_size = m.denoiser.net->config().low_res_size;
  if (low_res_size == 0 && !o.low_res.empty())
    throw std::invalid_argument("--low-res " + o.low_res + ": " + m.checkpoint +
                                " is not an upsampler (model.low_res_size is 0)");
  if (o.low_res_noise_given && !m.denoiser.net->config().low_res_noise)
    throw std::invalid_argument(
        fmt::format("--low-res-noise {}: {} was not trained with noise conditioning augmentation "
                    "(model.low_res_noise)",
                    o.low_res_noise, m.checkpoint));
  if (o.low_res_noise < 0 || o.low_res_noise > 1)
    throw std::invalid_argument(
        fmt::format("--low-res-noise {} must be in [0, 1], a fraction of the diffusion's timesteps",
                    o.low_res_noise));
  if (low_res_size > 0) {
    if (o.low_res.empty())
      throw std::invalid_argument(
          fmt::format("{} is an upsampler from {}x{} images: give them with --low-res (a shard "
                      "file, such as a difftrain sample .h5, or a shard set)",
                      m.checkpoint, low_res_size, low_res_size));
    if (p.classifier)
      throw std::invalid_argument(
          "--classifier: classifier guidance of an upsampler is not "
          "supported (guided-diffusion guides its base models only)");
    p.low_res = read_low_res_images(o.low_res, o.num, m);
    if (p.classes > 0 && p.low_res->labels.defined() &&
        (p.low_res->labels.min().item<int64_t>() < 0 ||
         p.low_res->labels.max().item<int64_t>() >= p.classes))
      throw std::invalid_argument(fmt::format(
          "--low-res {}: its labels leave [0, {}), the upsampler's classes", o.low_res, p.classes));
    if (p.classes > 0 && o.label < 0 && !p.low_res->labels.defined())
      throw std::invalid_argument(
          "--low-res " + o.low_res +
          ": has no labels, and the upsampler is class-conditional: give --class");
  }
  if (o.guidance_scale != 1.0 && !m.denoiser.net->config().null_class)
    throw std::invalid_argument(fmt::format(
        "--guidance-scale {}: {} was not trained for classifier-free guidance (it needs a "
        "class-conditional run with training.p_uncond > 0)",
        o.guidance_scale, m.checkpoint));

  // Samples of a model trained on padded images are cropped back to the data's size.
  const int64_t size = m.shape.image_size;
  p.canvas = data::stored_canvas(size, size, m.shape.channels);
  if (m.config.data.pad_to > 0) {
    if (m.train_manifest) {
      p.canvas = data::centred_canvas(m.train_manifest->height, m.train_manifest->width,
                                      m.shape.channels, size);
    } else {
      spdlog::warn(
          "data.pad_to = {} but the training manifest cannot be read: the samples keep "
          "the padded size {}x{}",
          m.config.data.pad_to, size, size);
    }
  }

  p.out = strip_extension(o.out);
  if (world.rank() == 0) check_output_directory(p.out, o.out);
  return p;
}

// uint8 HWC images of this rank's samples [first, first + count), and their labels.
struct Samples {
  at::Tensor images;  // uint8 [n, h, w, c], CPU
  at::Tensor labels;  // int64 [n], CPU (all zero for unconditional models)
};

Samples sample_range(const Plan& p, const Options& o, int64_t first, int64_t count, bool progress) {
  const TrainedModel& m = p.model;
  const int64_t C = m.shape.channels, S = m.shape.image_size, classes = p.classes;
  std::vector<at::Tensor> images;
  std::vector<int64_t> label_list;
  // An upsampler's sample i starts from low-res image i mod n, with its label.
  const int64_t n_low = p.low_res ? p.low_res->images.size(0) : 0;
  const at::Tensor low_res_labels = p.low_res ? p.low_res->labels : at::Tensor();
  for (int64_t i = first; i < first + count; ++i)
    label_list.push_back(o.label >= 0 && classes > 0 ? o.label
                         : low_res_labels.defined()  ? low_res_labels[i % n_low].item<int64_t>()
                         : classes == 0              ? 0
                                                     : i % classes);
  const at::Tensor labels = at::tensor(label_list, at::kLong);
  at::Tensor low_res_rows;  // this rank's low-res images, one per sample
  if (p.low_res)
    low_res_rows =
        p.low_res->images.index_select(0, at::arange(first, first + count).remainder(n_low));
  // Noise conditioning augmentation: the low-res images noised to the chosen level, as in
  // training, each with noise of its own stream (apart from the sampler's).
  train::Denoiser denoiser = m.denoiser;
  if (low_res_rows.defined() && denoiser.net->config().low_res_noise) {
    denoiser.low_res_noise_t =
        train::low_res_noise_level(o.low_res_noise, m.diffusion.num_timesteps);
    at::Tensor eps = at::empty_like(low_res_rows);
    const auto generators = train::sample_generators(
        train::step_seed(o.seed, 0, train::RngStream::low_res_noise), first, count);
    for (int64_t i = 0; i < count; ++i)
      eps.select(0, i).normal_(0.0, 1.0, generators[static_cast<std::size_t>(i)]);
    const at::Tensor level = at::full({count}, denoiser.low_res_noise_t, at::kLong);
    low_res_rows = diffusion::q_sample(m.diffusion, low_res_rows.to(m.device), level.to(m.device),
                                       eps.to(m.device));
  }

  const long steps = p.diffusion.num_timesteps;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t b0 = 0; b0 < count; b0 += o.batch) {
    const int64_t b = std::min(o.batch, count - b0);
    const at::Tensor y = classes > 0 ? labels.narrow(0, b0, b).to(m.device) : at::Tensor();
    const int64_t model_classes = m.shape.num_classes;
    // Scale 1 (the default, and the only one for other models) is with_labels(y).
    const at::Tensor low_res =
        low_res_rows.defined() ? low_res_rows.narrow(0, b0, b).to(m.device) : at::Tensor();
    diffusion::ModelFn model =
        denoiser.with_guidance(model_classes > 0 ? y : at::Tensor(), model_classes,
                               o.guidance_scale, o.guidance_rescale, low_res);
    if (p.timestep_map.defined()) model = diffusion::respaced_model(model, p.timestep_map);

    diffusion::SampleOptions so;
    so.eta = o.eta;
    if (p.classifier && o.classifier_scale != 0) {  // scale 0: no gradient to compute
      so.classifier_guidance = p.classifier->classifier.guidance(y, o.classifier_scale);
      if (p.timestep_map.defined())
        so.classifier_guidance = diffusion::respaced_model(so.classifier_guidance, p.timestep_map);
    }
    if (progress)
      so.on_step = [&](long i) {
        fmt::print(stderr, "\rbatch at sample {}/{}: step {}/{}   ", b0 + b, count, steps - i,
                   steps);
        if (i == 0) fmt::print(stderr, "\r{:60}\r", "");
      };
    const auto noise = diffusion::per_sample_noise(train::sample_generators(o.seed, first + b0, b));
    at::Tensor x;
    {
      c10::InferenceMode guard;
      x = diffusion::sample_loop(o.sampler, p.diffusion, model, {b, C, S, S}, noise, so);
    }
    images.push_back(data::to_stored_pixels(x, p.canvas));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spdlog::info("sampled {}/{} ({:.2f} images/s)", b0 + b, count, (b0 + b) / seconds);
  }
  if (images.empty())
    return {at::empty({0, p.canvas.height, p.canvas.width, C}, at::kByte), labels};
  return {at::cat(images), labels};
}

// Every rank's samples in rank order, on rank 0 (others get an empty result).
Samples gather(const Samples& mine, int64_t num, parallel::Communicator& comm,
               const c10::Device& device) {
  const int W = comm.size();
  if (W == 1) return mine;
  const int64_t most = (num + W - 1) / W;
  const auto padded = [&](const at::Tensor& t) {
    std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
    shape[0] = most;
    at::Tensor r = at::zeros(shape, t.options());
    r.narrow(0, 0, t.size(0)).copy_(t);
    return r.to(device);
  };
  const at::Tensor images = comm.all_gather(padded(mine.images)).cpu();
  const at::Tensor labels = comm.all_gather(padded(mine.labels)).cpu();
  if (comm.rank() != 0) return {};
  std::vector<at::Tensor> im, lb;
  for (int r = 0; r < W; ++r) {
    const int64_t n = data::rank_share(num, r, W).size();
    im.push_back(images.narrow(0, r * most, n));
    lb.push_back(labels.narrow(0, r * most, n));
  }
  return {at::cat(im), at::cat(lb)};
}

void write_outputs(const Plan& p, const Options& o, const Samples& s) {
  const TrainedModel& m = p.model;
  const int64_t N = s.images.size(0), H = s.images.size(1), W = s.images.size(2),
                C = s.images.size(3);
  // Labels: the model's, the classifier's, or those of an upsampler's low-res images.
  const bool conditional = p.classes > 0 || (p.low_res && p.low_res->labels.defined());
  const auto* pixels = s.images.data_ptr<uint8_t>();
  const auto* labels = s.labels.data_ptr<int64_t>();

  if (C == 1 || C == 3 || C == 4) {
    data::write_png_grid(p.out + ".png", pixels, N, H, W, C);
  } else {
    spdlog::warn("{}-channel images: no PNG grid written", C);
  }

  nlohmann::ordered_json source{
      {"tool", "difftrain sample"},
      {"checkpoint", m.checkpoint},
      {"step", m.step},
      {"ema_rate", m.ema_rate ? nlohmann::ordered_json(*m.ema_rate) : nullptr},
      {"sampler", diffusion::sampler_name(o.sampler)},
      {"schedule", p.schedule},
      {"eta", o.eta},
      {"guidance_scale", o.guidance_scale},
      {"guidance_rescale", o.guidance_rescale},
      {"classifier", p.classifier ? nlohmann::ordered_json(p.classifier->checkpoint) : nullptr},
      {"classifier_scale", p.classifier ? nlohmann::ordered_json(o.classifier_scale) : nullptr},
      {"low_res", p.low_res ? nlohmann::ordered_json(o.low_res) : nullptr},
      {"low_res_noise", p.low_res && m.denoiser.net->config().low_res_noise
                            ? nlohmann::ordered_json(o.low_res_noise)
                            : nullptr},
      {"seed", o.seed}};
  const fs::path h5_path(p.out + ".h5");
  data::ShardSpec spec;
  spec.num_samples = N;
  spec.height = H;
  spec.width = W;
  spec.channels = C;
  spec.labels = conditional;
  spec.source = source.dump();
  data::ShardWriter writer(h5_path.parent_path().empty() ? "." : h5_path.parent_path().string(),
                           h5_path.filename().string(), spec);
  writer.append(pixels, labels, N);
  writer.finish();

  std::vector<data::NpyArray> arrays{{"arr_0", "|u1", pixels, 1, {N, H, W, C}}};
  // As improved-diffusion's image_sample.py: the labels as arr_1 for class-conditional models.
  if (conditional) arrays.push_back({"arr_1", "<i8", labels, 8, {N}});
  data::write_npz(p.out + ".npz", arrays);
}

int run(const Options& o, parallel::World& world) {
  const Plan plan = prepare(o, world);
  const TrainedModel& m = plan.model;
  spdlog::info("sampling {} images from {} with {} ({}){}{}, {} rank(s), device {}", o.num,
               describe(m), diffusion::sampler_name(o.sampler), plan.schedule,
               o.guidance_scale == 1.0 ? "" : fmt::format(", guidance scale {}", o.guidance_scale),
               plan.classifier ? fmt::format(", guided by the classifier {} (step {}) at scale {}",
                                             plan.classifier->checkpoint, plan.classifier->step,
                                             o.classifier_scale)
                               : "",
               world.size(), m.device.str());

  // Past this point a failure on one rank would leave the others waiting in the gather: it
  // ends the whole job (run_on_world aborts every rank).
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_communicator(world, m.device);
  const data::RowRange mine = data::rank_share(o.num, world.rank(), world.size());
  const bool progress = world.rank() == 0 && isatty(STDERR_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  const Samples local = sample_range(plan, o, mine.begin, mine.size(), progress);
  const Samples all = gather(local, o.num, *comm, m.device);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (world.rank() != 0) return kOk;

  try {
    write_outputs(plan, o, all);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kBadInput;
  }
  const double evals = static_cast<double>(o.num) * plan.diffusion.num_timesteps;
  spdlog::info("{} images in {:.1f} s: {:.2f} images/s, {:.0f} image-steps/s", o.num, seconds,
               o.num / seconds, evals / seconds);
  spdlog::info("wrote {0}.png, {0}.h5, {0}.npz", plan.out);
  return kOk;
}

}  // namespace

void add_sample_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "sample",
      "Draw images from a trained model (DDPM, DDIM or DPM-Solver++); writes OUT.png, OUT.h5, "
      "OUT.npz");
  add_model_source_options(*cmd, o->source);
  cmd->add_option("--num", o->num, "Number of images")->required();
  cmd->add_option("--out", o->out, "Output path without extension")->required();
  cmd->add_option_function<std::string>(
         "--sampler", [o](const std::string& name) { o->sampler = diffusion::parse_sampler(name); },
         "ddpm (ancestral), ddim, or dpm++2m (DPM-Solver++(2M), deterministic)")
      ->check(CLI::IsMember({"ddpm", "ddim", "dpm++2m"}));
  auto* steps = cmd->add_option(
      "--steps", o->steps,
      "Sampling steps, spread evenly over [0, T-1] (default: T for ddpm, 50 for ddim, 20 for "
      "dpm++2m)");
  steps->each([o](const std::string&) { o->steps_given = true; });
  auto* respacing = cmd->add_option("--respacing", o->respacing,
                                    "Respacing spec as improved-diffusion: ddim50, 250, 10,10,10");
  steps->excludes(respacing);
  respacing->excludes(steps);
  cmd->add_option("--eta", o->eta, "DDIM noise scale (0 = deterministic)")
      ->each([o](const std::string&) { o->eta_given = true; });
  cmd->add_option("--seed", o->seed, "Seed of the sampling noise");
  cmd->add_option("--class", o->label,
                  "Class label for class-conditional models (default: every class in turn)");
  cmd->add_option("--guidance-scale", o->guidance_scale,
                  "Classifier-free guidance: uncond + S * (cond - uncond); 1 = conditional (the "
                  "default), 0 = unconditional, > 1 = guided (models trained with "
                  "training.p_uncond > 0)");
  cmd->add_option("--guidance-rescale", o->guidance_rescale,
                  "Rescale the guided prediction to the conditional one's standard deviation, "
                  "blended by this weight in [0, 1] (Lin et al.; diffusers' guidance_rescale; "
                  "0 = off, 0.7 suggested)");
  auto* classifier =
      cmd->add_option("--classifier", o->classifier,
                      "Classifier guidance: a noisy classifier's run directory or checkpoint "
                      "(difftrain train-classifier), trained on the model's forward process");
  cmd->add_option("--classifier-scale", o->classifier_scale,
                  "Classifier guidance's scale s: the gradient of s log p(y | x_t) guides each "
                  "step (default 1)")
      ->needs(classifier);
  cmd->add_option("--low-res", o->low_res,
                  "An upsampler's input images: a base model's samples (.npz of difftrain "
                  "sample or image_sample.py: arr_0 images, arr_1 labels; or difftrain sample's "
                  ".h5), or a shard set (manifest.json or its directory); images of the output "
                  "size are area-downsampled first. Sample i upsamples image i mod n");
  cmd->add_option("--low-res-noise", o->low_res_noise,
                  "A noise-conditioned upsampler's (model.low_res_noise) level: the low-res "
                  "images are noised to timestep round(f (T - 1)) of the diffusion and the model "
                  "told so; f in [0, 1], default 0 (nearly clean). Higher levels trust the base "
                  "model's images less")
      ->each([o](const std::string&) { o->low_res_noise_given = true; });
  cmd->add_option("--batch", o->batch, "Images per network call on each rank");
  cmd->callback([o, &exit_code] {
    exit_code = run_on_world([&](parallel::World& world) { return run(*o, world); });
  });
}

}  // namespace difftrain::cli
