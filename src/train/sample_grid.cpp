#include "train/sample_grid.hpp"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <filesystem>
#include <vector>

#include "data/canvas.hpp"
#include "data/png_grid.hpp"
#include "diffusion/respace.hpp"
#include "diffusion/sampling.hpp"
#include "train/denoiser.hpp"
#include "train/heldout_bpd.hpp"
#include "train/step_rng.hpp"

namespace difftrain::train {
namespace {

namespace fs = std::filesystem;

// The first EMA's weights in the network while it lives, the network's own weights (copied
// aside, bit for bit) and training mode after; the network in eval mode meanwhile.
class EmaWeightsInNetwork {
 public:
  explicit EmaWeightsInNetwork(TrainState& state)
      : net_(state.net), params_(state.net->parameters()), was_training_(net_->is_training()) {
    net_->eval();
    if (state.emas.empty()) return;
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      raw_.push_back(params_[i].detach().clone());
      params_[i].copy_(state.emas.front().params[i]);
    }
  }
  ~EmaWeightsInNetwork() {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < raw_.size(); ++i)
      params_[i].copy_(raw_[i]);
    net_->train(was_training_);
  }
  EmaWeightsInNetwork(const EmaWeightsInNetwork&) = delete;
  EmaWeightsInNetwork& operator=(const EmaWeightsInNetwork&) = delete;

 private:
  model::UNet net_;
  std::vector<at::Tensor> params_, raw_;
  bool was_training_;
};

}  // namespace

std::string sample_grid_path(const std::string& run_dir, int64_t step) {
  return (fs::path(run_dir) / "samples" / fmt::format("step_{:09d}.png", step)).string();
}

bool write_sample_grid(TrainState& state, const Config& config, const DataShape& shape,
                       const diffusion::GaussianDiffusion& diffusion, int64_t height, int64_t width,
                       const std::string& path) {
  const LoggingConfig& l = config.logging;
  const int64_t n = l.sample_num, C = shape.channels, S = shape.image_size;
  const c10::Device device = state.net->parameters().front().device();
  if (C != 1 && C != 3 && C != 4) {
    spdlog::warn("{}-channel images: no sample grid (PNG holds 1, 3 or 4 channels)", C);
    return false;
  }

  // As `difftrain sample --sampler dpm++2m --steps K --seed <config seed>`: K steps spread
  // evenly, each sample its own seeded generator, classes in turn.
  const diffusion::RespacedDiffusion respaced = diffusion::respace(
      diffusion,
      diffusion::space_timesteps(diffusion.num_timesteps, std::to_string(l.sample_steps)));
  at::Tensor y;
  if (shape.num_classes > 0) y = at::arange(n, at::kLong).remainder(shape.num_classes).to(device);
  const Denoiser denoiser = make_denoiser(state.net, config);
  // An upsampler upsamples a fixed batch of the held-out set (else the training set), with their
  // labels, by ancestral sampling: the deterministic samplers ruin an epsilon-predicting
  // upsampler's images (docs/sampling-and-eval.md#upsamplers), and guided-diffusion samples its
  // upsamplers so too.
  at::Tensor low_res;
  if (config.model.low_res_size > 0) {
    const bool held_out = !config.data.validation.empty();
    const HeldOutBatch images = read_fixed_batch(
        config, shape, held_out ? config.data.validation : config.data.train,
        held_out ? "data.validation" : "data.train", n, "logging.sample_num", 0, 1, device);
    low_res = denoiser.low_res_of(images.images);
    if (y.defined()) y = images.labels;
  }
  const diffusion::ModelFn model =
      diffusion::respaced_model(denoiser.with_labels(y, low_res), respaced.timestep_map);
  const auto noise =
      diffusion::per_sample_noise(sample_generators(static_cast<uint64_t>(config.seed), 0, n));

  at::Tensor x;
  {
    const EmaWeightsInNetwork ema(state);
    c10::InferenceMode guard;
    x = diffusion::sample_loop(
        low_res.defined() ? diffusion::Sampler::ddpm : diffusion::Sampler::dpm_solver_2m,
        respaced.diffusion, model, {n, C, S, S}, noise);
  }
  const data::Canvas canvas = config.data.pad_to > 0 ? data::centred_canvas(height, width, C, S)
                                                     : data::stored_canvas(S, S, C);
  const at::Tensor pixels = data::to_stored_pixels(x, canvas).contiguous();
  fs::create_directories(fs::path(path).parent_path());
  const std::string tmp = path + ".tmp";
  data::write_png_grid(tmp, pixels.data_ptr<uint8_t>(), n, canvas.height, canvas.width, C);
  fs::rename(tmp, path);
  return true;
}

}  // namespace difftrain::train
