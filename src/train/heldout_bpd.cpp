#include "train/heldout_bpd.hpp"

#include <torch/torch.h>

#include <cmath>

#include "common/host_to_device.hpp"
#include "data/loader.hpp"
#include "data/manifest.hpp"
#include "diffusion/bpd_estimate.hpp"
#include "parallel/communicator.hpp"
#include "train/step_rng.hpp"

namespace difftrain::train {

HeldOutBatch read_fixed_batch(const Config& config, const DataShape& shape,
                              const std::string& manifest_path, const std::string& key,
                              int64_t count, const std::string& count_key, int rank, int world,
                              const c10::Device& device) {
  const data::Manifest manifest = data::read_manifest(manifest_path);
  const DataShape held_out = data_shape(config, &manifest);
  if (held_out.channels != shape.channels || held_out.image_size != shape.image_size)
    throw ConfigError(
        "config key '" + key + "': " + manifest.path + " has " + std::to_string(held_out.channels) +
        "-channel " + std::to_string(held_out.image_size) +
        " px images (after data.pad_to), the training data " + std::to_string(shape.channels) +
        "-channel " + std::to_string(shape.image_size) + " px");
  if (manifest.num_samples() < count)
    throw ConfigError("config key '" + count_key + "' = " + std::to_string(count) + " but " +
                      manifest.path + " holds " + std::to_string(manifest.num_samples()) +
                      " images");

  // The training loader's geometry: one fixed batch, no flips.
  data::LoaderOptions lo = loader_options(config, shape, rank, world, device);
  lo.manifest = manifest_path;
  lo.global_batch = count;
  lo.last_batch = data::LastBatch::drop;
  lo.random_flip = false;
  lo.prefetch = 1;
  data::Loader loader(lo);
  const data::Batch b = loader.next();
  return {b.images, b.labels, count, b.row_offset};
}

HeldOutBatch read_heldout_batch(const Config& config, const DataShape& shape, int rank, int world,
                                const c10::Device& device) {
  return read_fixed_batch(config, shape, config.data.validation, "data.validation",
                          config.logging.bpd_batch, "logging.bpd_batch", rank, world, device);
}

HeldOutBpd estimate_heldout_bpd(const Denoiser& denoiser,
                                const diffusion::GaussianDiffusion& diffusion, const Config& config,
                                const HeldOutBatch& batch, parallel::Communicator& comm) {
  model::UNet net = denoiser.net;
  const bool was_training = net->is_training();
  net->eval();
  torch::NoGradGuard no_grad;

  const at::Tensor& x = batch.images;
  const diffusion::ModelFn model = denoiser.with_labels(batch.labels, denoiser.low_res_of(x));
  const uint64_t seed = static_cast<uint64_t>(config.seed);
  // eps at timestep t: drawn for the whole fixed batch, this rank takes its rows.
  const auto noise = [&](long t) {
    auto gen = cpu_generator(step_seed(seed, t, RngStream::evaluation, 1));
    at::IntArrayRef s = x.sizes();
    return host_to_device(
        at::randn({batch.global_size, s[1], s[2], s[3]}, gen).narrow(0, batch.row_offset, s[0]),
        x.device());
  };
  // The timesteps of the whole fixed batch, this rank's rows.
  diffusion::StratifiedTimesteps timesteps = diffusion::stratified_timesteps(
      diffusion.num_timesteps, config.logging.bpd_timesteps, batch.global_size,
      cpu_generator(step_seed(seed, 0, RngStream::evaluation)));
  timesteps.t = timesteps.t.narrow(0, batch.row_offset, x.size(0));
  const diffusion::BpdEstimate e =
      diffusion::estimate_bpd(diffusion, model, x, timesteps, /*clip_denoised=*/true, noise);
  net->train(was_training);

  // Sums over images on every rank: sum, sum of squares, prior.
  at::Tensor sums =
      at::stack({e.total_bpd.sum(), e.total_bpd.square().sum(), e.prior_bpd.sum()}).to(at::kDouble);
  comm.all_reduce(sums, parallel::ReduceOp::sum);
  sums = sums.cpu();
  const auto* s = sums.data_ptr<double>();
  const double n = static_cast<double>(batch.global_size);
  HeldOutBpd r;
  r.bpd = s[0] / n;
  const double variance = std::max(0.0, s[1] / n - r.bpd * r.bpd) * n / std::max(1.0, n - 1);
  r.standard_error = std::sqrt(variance / n);
  r.prior_bpd = s[2] / n;
  r.images = batch.global_size;
  r.timesteps = config.logging.bpd_timesteps;
  return r;
}

}  // namespace difftrain::train
