#include "cli/bound_eval.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "data/canvas.hpp"
#include "data/sample_order.hpp"
#include "data/shard_reader.hpp"
#include "data/shard_set.hpp"
#include "diffusion/bound.hpp"
#include "parallel/communicator.hpp"
#include "train/step_rng.hpp"

namespace difftrain::cli {
namespace {

constexpr uint64_t kSubsetTag = 0x4556414c;  // "EVAL": the choice of the --num images

std::string chw(int64_t c, int64_t h, int64_t w) {
  return fmt::format("{}x{}x{}", c, h, w);
}

// Images [first, first + count) of the chosen ones as the network sees them, as the loader
// converts and pads them.
at::Tensor read_images(data::ShardSet& shards, const EvalImages& e, int64_t first, int64_t count) {
  std::vector<uint8_t> raw(static_cast<std::size_t>(count * shards.sample_bytes()));
  for (int64_t i = 0; i < count; ++i)
    shards.read(e.indices[first + i], raw.data() + i * shards.sample_bytes());
  return data::to_network_pixels(raw.data(), count, e.canvas);
}

// This rank's images [first, first + count): the sums of the bound's terms
// (diffusion/bound_summary.hpp), and each image's total written into image_bpd (of every image).
at::Tensor evaluate_range(const TrainedModel& m, const EvalImages& e, int64_t batch, uint64_t seed,
                          int64_t first, int64_t count, bool progress, at::Tensor& image_bpd) {
  const long T = m.diffusion.num_timesteps;
  data::ShardSet shards(e.manifest);
  at::Tensor sums = diffusion::empty_bound_sums(T, c10::kCPU);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t b0 = 0; b0 < count; b0 += batch) {
    const int64_t b = std::min(batch, count - b0);
    const at::Tensor x = read_images(shards, e, first + b0, b).to(m.device);
    at::Tensor y;
    if (m.shape.num_classes > 0) {
      std::vector<int64_t> labels;
      for (int64_t i = first + b0; i < first + b0 + b; ++i)
        labels.push_back(e.labels[static_cast<std::size_t>(e.indices[i])]);
      y = at::tensor(labels, at::kLong).to(m.device);
    }
    // One generator per image, drawn from T-1 down to 0 as calc_bpd_loop asks.
    std::vector<at::Generator> generators;
    for (int64_t i = first + b0; i < first + b0 + b; ++i)
      generators.push_back(
          train::cpu_generator(train::step_seed(seed, e.indices[i], train::RngStream::evaluation)));
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
    const diffusion::BoundTerms terms =
        diffusion::calc_bpd_loop(m.diffusion, m.denoiser.with_labels(y, m.denoiser.low_res_of(x)),
                                 x, /*clip_denoised=*/true, noise, on_step);
    sums += diffusion::bound_sums(terms).cpu();
    image_bpd.narrow(0, first + b0, b).copy_(terms.total_bpd);
    if (progress) fmt::print(stderr, "\r{:60}\r", "");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spdlog::info("evaluated {}/{} images ({:.1f} s, {:.2f} images/s); running bits/dim {:.4f}",
                 b0 + b, count, seconds, (b0 + b) / seconds,
                 sums[1].item<double>() / sums[0].item<double>());
  }
  return sums;
}

}  // namespace

EvalImages choose_eval_images(const data::Manifest& d, const TrainedModel& m, int64_t num,
                              uint64_t seed) {
  if (num < 0) throw std::invalid_argument("--num must be >= 0 (0 = all images)");
  // The held-out images must be what the network was trained on: same channels, and the
  // model's size directly or after the same padding.
  const int64_t S = m.shape.image_size;
  const bool fits =
      d.channels == m.shape.channels &&
      (m.config.data.pad_to > 0 ? d.height <= S && d.width <= S : d.height == S && d.width == S);
  if (!fits)
    throw std::invalid_argument(d.path + ": images are " + chw(d.channels, d.height, d.width) +
                                " (CxHxW) but the model of " + m.checkpoint + " takes " +
                                chw(m.shape.channels, S, S) +
                                (m.config.data.pad_to > 0 ? " (padded from smaller images)" : ""));
  EvalImages e;
  e.manifest = d;
  e.canvas = data::centred_canvas(d.height, d.width, d.channels, S);

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
      e.labels.insert(e.labels.end(), shard.begin(), shard.end());
    }
  }

  const int64_t n = d.num_samples();
  if (num == 0 || num >= n) {
    if (num > n)
      spdlog::warn("--num {} but {} has {} images: evaluating all of them", num, d.path, n);
    for (int64_t i = 0; i < n; ++i)
      e.indices.push_back(i);
  } else {
    const auto perm = data::permutation(n, data::hash_key(seed, kSubsetTag, 0));
    e.indices.assign(perm.begin(), perm.begin() + num);
    std::sort(e.indices.begin(), e.indices.end());
  }
  return e;
}

int64_t model_dims(const TrainedModel& m) {
  return m.shape.channels * m.shape.image_size * m.shape.image_size;
}

int64_t real_dims(const EvalImages& images) {
  const data::Manifest& d = images.manifest;
  return d.channels * d.height * d.width;
}

BoundEvaluation evaluate_bound(const TrainedModel& m, const EvalImages& images, int64_t batch,
                               uint64_t seed, parallel::Communicator& comm, bool progress) {
  if (batch < 1) throw std::invalid_argument("--batch must be >= 1, not " + std::to_string(batch));
  const auto n = static_cast<int64_t>(images.indices.size());
  const data::RowRange mine = data::rank_share(n, comm.rank(), comm.size());
  // Every rank fills its own images' entries and leaves the others 0: the reduction's sum
  // gathers them.
  at::Tensor image_bpd = at::zeros({n}, at::kDouble);
  at::Tensor sums =
      evaluate_range(m, images, batch, seed, mine.begin, mine.size(), progress, image_bpd);
  at::Tensor reduced = at::cat({sums, image_bpd}).to(m.device);
  comm.all_reduce(reduced, parallel::ReduceOp::sum);
  reduced = reduced.cpu();
  BoundEvaluation r;
  r.summary =
      diffusion::summarize_bound(reduced.narrow(0, 0, sums.size(0)), m.diffusion.num_timesteps);
  const at::Tensor totals = reduced.narrow(0, sums.size(0), n).contiguous();
  r.image_bpd.assign(totals.data_ptr<double>(), totals.data_ptr<double>() + n);
  return r;
}

}  // namespace difftrain::cli
