// `difftrain fid`: the Fréchet Inception Distance between two sets of images (samples, shards),
// or the Inception statistics of one set (--save-stats), with pytorch-fid's network, weights and
// preprocessing; from the same network, sFID (the Fréchet distance of its spatial features),
// each image set's Inception Score and, for two sets of images, precision and recall in the
// Inception features. Under mpirun each rank takes a slice of every set and the float64 sums are
// reduced, so the result does not depend on the number of ranks or on --batch beyond rounding.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <tuple>

#include "cli/commands.hpp"
#include "cli/run_on_world.hpp"
#include "cli/stored_images.hpp"
#include "cli/trained_model.hpp"
#include "parallel/communicator.hpp"
#include "parallel/rank_device.hpp"
#include "parallel/world.hpp"
#include "quality/feature_statistics.hpp"
#include "quality/fid_inception.hpp"
#include "quality/frechet_distance.hpp"
#include "quality/inception_score.hpp"
#include "quality/precision_recall.hpp"

namespace difftrain::cli {
namespace {

namespace fs = std::filesystem;

struct Options {
  std::vector<std::string> sources;
  std::string inception;
  int64_t num = 0;  // 0 = every image of each set
  int64_t batch = 64;
  std::string device = "auto";
  int64_t is_splits = 10;  // 0 = no Inception Score
  int64_t pr_k = 3;        // 0 = no precision and recall
  std::string save_stats;
  std::string out;
};

// A set of images, or statistics already computed from one.
struct Source {
  std::string path;
  bool statistics = false;  // an .npz with mu and sigma (and maybe mu_s and sigma_s)
};

Source classify(const std::string& path) {
  if (!fs::exists(path)) throw std::invalid_argument(path + ": no such file or directory");
  const bool npz = fs::path(path).extension() == ".npz";
  return {path, npz && quality::holds_statistics(path)};
}

// Rank r's share [begin, end) of n images, in rank order.
std::pair<int64_t, int64_t> share(int64_t n, int rank, int ranks) {
  return {n * rank / ranks, n * (rank + 1) / ranks};
}
std::pair<int64_t, int64_t> share(int64_t n, const parallel::World& world) {
  return share(n, world.rank(), world.size());
}

// Every rank's share of n rows (`mine`, [share, ...]), in rank order: the n rows on every rank.
// all_gather takes equal shapes, so each share travels padded to the largest.
at::Tensor gather_shares(const at::Tensor& mine, int64_t n, parallel::Communicator& comm,
                         const parallel::World& world) {
  const int64_t most = (n + world.size() - 1) / world.size();
  std::vector<int64_t> padded_shape = mine.sizes().vec();
  padded_shape[0] = most;
  at::Tensor padded = at::zeros(padded_shape, mine.options());
  padded.narrow(0, 0, mine.size(0)).copy_(mine);
  const at::Tensor all = comm.all_gather(padded);
  std::vector<at::Tensor> shares;
  for (int r = 0; r < world.size(); ++r) {
    const auto [begin, end] = share(n, r, world.size());
    shares.push_back(all.narrow(0, r * most, end - begin));
  }
  return at::cat(shares);
}

// What a set gives: its feature statistics, and for a set of images its Inception Score and, when
// precision and recall are wanted, all its pool3 features.
struct SetResult {
  quality::SetStatistics statistics;  // of a set of images, the spatial ones too
  std::optional<quality::InceptionScore> inception_score;
  at::Tensor features;  // [n, 2048] float32 on the device, on every rank; or undefined
};

struct PrecisionRecall {
  double precision = 0;  // the first set's images inside the second set's manifold
  double recall = 0;     // the second set's inside the first's
};

// The share of `queries`' rows in the manifold of `set`, each rank testing its share of them.
double share_inside(const at::Tensor& queries, const at::Tensor& set, const at::Tensor& radii,
                    parallel::Communicator& comm, const parallel::World& world) {
  const int64_t n = queries.size(0);
  const auto [begin, end] = share(n, world);
  at::Tensor inside = quality::in_manifold(queries.narrow(0, begin, end - begin), set, radii,
                                           quality::distance_block_rows(set.size(0)))
                          .sum()
                          .to(at::kLong)
                          .reshape({1});
  comm.all_reduce(inside, parallel::ReduceOp::sum);
  return static_cast<double>(inside.item<int64_t>()) / static_cast<double>(n);
}

// Each rank finds the radii of its share of each set, then tests its share of each set against
// the other's manifold.
PrecisionRecall precision_recall(const at::Tensor& samples, const at::Tensor& references, int64_t k,
                                 parallel::Communicator& comm, const parallel::World& world) {
  const auto radii = [&](const at::Tensor& set) {
    const auto [begin, end] = share(set.size(0), world);
    return gather_shares(
        quality::manifold_radii(set, k, begin, end, quality::distance_block_rows(set.size(0))),
        set.size(0), comm, world);
  };
  const at::Tensor sample_radii = radii(samples), reference_radii = radii(references);
  return {share_inside(samples, references, reference_radii, comm, world),
          share_inside(references, samples, sample_radii, comm, world)};
}

SetResult measure_image_set(const std::string& path, const Options& o, bool keep_features,
                            quality::FidInception& net, c10::Device device,
                            parallel::Communicator& comm, const parallel::World& world) {
  const int64_t num = o.num, batch = o.batch;
  int64_t n = 0, begin = 0, end = 0;
  const StoredImages mine = read_stored_images(path, [&](int64_t total) {
    n = num > 0 ? std::min(total, num) : total;
    std::tie(begin, end) = share(n, world);
    return std::pair{begin, end - begin};
  });
  if (n < 2)
    throw std::invalid_argument(fmt::format("{}: {} image(s); FID needs at least 2", path, n));
  if (const int64_t c = mine.pixels.size(3); c != 1 && c != 3)
    throw std::invalid_argument(fmt::format(
        "{}: images of {} channels; FID's network takes gray (1) or RGB (3) images", path, c));
  spdlog::info("{}: {} images of {}x{}x{}, {} per rank", path, n, mine.pixels.size(1),
               mine.pixels.size(2), mine.pixels.size(3), end - begin);

  quality::FeatureSums sums = quality::zero_feature_sums(quality::kPool3Features, device);
  quality::FeatureSums spatial = quality::zero_feature_sums(quality::kSpatialFeatures, device);
  std::vector<at::Tensor> kept;  // this rank's features, for precision and recall
  const bool scored = o.is_splits > 0 && n >= o.is_splits;
  if (o.is_splits > 0 && !scored)
    spdlog::info("{}: no Inception Score: {} images, fewer than its {} splits (--is-splits)", path,
                 n, o.is_splits);
  quality::ClassProbabilitySums classes;
  if (scored)
    classes =
        quality::zero_class_probability_sums(o.is_splits, quality::kInceptionClasses, n, device);
  const auto t0 = std::chrono::steady_clock::now();
  auto last_report = t0;
  for (int64_t i = 0; i < end - begin; i += batch) {
    const quality::InceptionFeatures features = quality::inception_features(
        net, mine.pixels.narrow(0, i, std::min(batch, end - begin - i)));
    sums.add(features.pool3);
    spatial.add(features.spatial);
    if (keep_features) kept.push_back(features.pool3);
    if (scored) classes.add(net->class_logits(features.pool3), begin + i);
    const auto now = std::chrono::steady_clock::now();
    if (now - last_report > std::chrono::seconds(30)) {
      spdlog::info(
          "  {} of {} images on rank 0 ({:.1f} images/s)", i + batch, end - begin,
          static_cast<double>(i + batch) / std::chrono::duration<double>(now - t0).count());
      last_report = now;
    }
  }
  // One reduction of the float64 sums: the statistics of all n images on every rank.
  at::Tensor count = at::full({1}, sums.count, at::TensorOptions(at::kLong).device(device));
  comm.all_reduce(sums.sum, parallel::ReduceOp::sum);
  comm.all_reduce(sums.outer, parallel::ReduceOp::sum);
  comm.all_reduce(spatial.sum, parallel::ReduceOp::sum);
  comm.all_reduce(spatial.outer, parallel::ReduceOp::sum);
  comm.all_reduce(count, parallel::ReduceOp::sum);
  sums.count = spatial.count = count.item<int64_t>();
  SetResult result{
      {quality::statistics_of(sums), quality::statistics_of(spatial)}, std::nullopt, {}};
  if (scored) {
    comm.all_reduce(classes.probability, parallel::ReduceOp::sum);
    comm.all_reduce(classes.negentropy, parallel::ReduceOp::sum);
    comm.all_reduce(classes.count, parallel::ReduceOp::sum);
    result.inception_score = quality::inception_score(classes);
  }
  if (keep_features)
    result.features = gather_shares(
        kept.empty() ? at::empty({0, quality::kPool3Features}, sums.sum.options().dtype(at::kFloat))
                     : at::cat(kept),
        n, comm, world);
  return result;
}

void write_report(const Options& o, const std::vector<SetResult>& results,
                  std::optional<double> fid, std::optional<double> sfid,
                  std::optional<PrecisionRecall> pr, double seconds, int ranks) {
  nlohmann::ordered_json sets = nlohmann::ordered_json::array();
  for (std::size_t i = 0; i < results.size(); ++i) {
    nlohmann::ordered_json set = {{"path", o.sources[i]},
                                  {"images", results[i].statistics.pool3.count}};
    if (const auto& is = results[i].inception_score)
      set["inception_score"] = {{"mean", is->mean}, {"std", is->std}, {"splits", is->splits}};
    sets.push_back(set);
  }
  nlohmann::ordered_json j;
  if (fid) j["fid"] = *fid;
  if (sfid) j["sfid"] = *sfid;
  if (pr)
    j["precision_recall"] = {{"k", o.pr_k}, {"precision", pr->precision}, {"recall", pr->recall}};
  j["sets"] = sets;
  j["inception"] = o.inception;
  j["features"] = quality::kPool3Features;
  j["spatial_features"] = quality::kSpatialFeatures;
  j["seconds"] = seconds;
  j["ranks"] = ranks;
  std::ofstream f(o.out);
  f << j.dump(2) << "\n";
  if (!f) throw std::runtime_error(o.out + ": cannot write the report");
}

int run(const Options& o, parallel::World& world) {
  if (o.batch < 1)
    throw std::invalid_argument(fmt::format("--batch must be >= 1, not {}", o.batch));
  if (o.num < 0) throw std::invalid_argument("--num must be >= 0 (0 = all images)");
  if (o.is_splits < 0)
    throw std::invalid_argument("--is-splits must be >= 0 (0 = no Inception Score)");
  if (o.pr_k < 0) throw std::invalid_argument("--pr-k must be >= 0 (0 = no precision and recall)");
  if (o.sources.size() == 2 && !o.save_stats.empty())
    throw std::invalid_argument("--save-stats takes one set of images, not two");
  std::vector<Source> sources;
  for (const std::string& path : o.sources)
    sources.push_back(classify(path));
  // One set alone gives its Inception Score, its statistics file, or both.
  const bool score_only = sources.size() == 1 && o.save_stats.empty();
  if (score_only && (o.is_splits == 0 || sources[0].statistics))
    throw std::invalid_argument(
        "one set: give a second to compare it with, --save-stats FILE.npz to keep its "
        "statistics, or images for their Inception Score");

  const bool needs_network =
      std::any_of(sources.begin(), sources.end(), [](const Source& s) { return !s.statistics; });
  if (needs_network && o.inception.empty())
    throw std::invalid_argument(
        "--inception FILE is needed to compute features: pytorch-fid's weights, "
        "pt_inception-2015-12-05-6726825d.pth (docs/sampling-and-eval.md#fid says where from)");
  const c10::Device device =
      needs_network ? parallel::rank_device(world, parallel::parse_device_request(o.device))
                    : c10::Device(c10::kCPU);
  quality::FidInception net{nullptr};
  if (needs_network) net = quality::load_fid_inception(o.inception, device);
  // Past this point a failure on one rank would leave the others waiting in a reduction: it ends
  // the whole job (run_on_world aborts every rank).
  const std::unique_ptr<parallel::Communicator> comm = parallel::make_communicator(world, device);

  const auto t0 = std::chrono::steady_clock::now();
  // Precision and recall compare two sets of images, which must keep their features for it.
  const bool compare_images =
      o.pr_k > 0 && sources.size() == 2 && !sources[0].statistics && !sources[1].statistics;
  std::vector<SetResult> results;
  for (const Source& s : sources)
    results.push_back(
        s.statistics ? SetResult{quality::read_statistics(s.path), std::nullopt, {}}
                     : measure_image_set(s.path, o, compare_images, net, device, *comm, world));
  std::optional<PrecisionRecall> pr;
  if (compare_images) {
    if (const int64_t fewest = std::min(results[0].features.size(0), results[1].features.size(0));
        fewest > o.pr_k)
      pr = precision_recall(results[0].features, results[1].features, o.pr_k, *comm, world);
    else
      spdlog::info("no precision and recall: a set of {} images, not more than k = {} (--pr-k)",
                   fewest, o.pr_k);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (score_only && !results[0].inception_score)
    throw std::invalid_argument(fmt::format(
        "{}: {} images, fewer than the Inception Score's {} splits: give --is-splits {} or fewer",
        o.sources[0], results[0].statistics.pool3.count, o.is_splits,
        results[0].statistics.pool3.count));
  if (world.rank() != 0) return kOk;

  std::optional<double> fid, sfid;
  if (!o.save_stats.empty()) {
    quality::write_statistics(o.save_stats, results[0].statistics);
    spdlog::info("wrote the statistics of {} images to {} ({:.1f} s)",
                 results[0].statistics.pool3.count, o.save_stats, seconds);
  } else if (results.size() == 2) {
    const quality::SetStatistics &a = results[0].statistics, &b = results[1].statistics;
    fid = quality::frechet_distance(a.pool3, b.pool3);
    const auto images = [](const quality::FeatureStatistics& s) {
      return s.count > 0 ? fmt::format("{} images", s.count) : std::string("statistics");
    };
    fmt::print("FID {:.4f} ({}: {}; {}: {}; Inception pool3, {} features)\n", *fid, o.sources[0],
               images(a.pool3), o.sources[1], images(b.pool3), quality::kPool3Features);
    if (a.spatial && b.spatial) {
      sfid = quality::frechet_distance(*a.spatial, *b.spatial);
      fmt::print("sFID {:.4f} (Inception mixed_6/conv, {} spatial features)\n", *sfid,
                 quality::kSpatialFeatures);
    } else {
      spdlog::info("no sFID: {} has no spatial statistics (mu_s, sigma_s), as pytorch-fid's files",
                   o.sources[a.spatial ? 1 : 0]);
    }
  }
  if (pr)
    fmt::print(
        "precision {:.4f}, recall {:.4f} ({}'s images in {}'s manifold, and the other way; "
        "k = {})\n",
        pr->precision, pr->recall, o.sources[0], o.sources[1], o.pr_k);
  for (std::size_t i = 0; i < results.size(); ++i)
    if (const auto& is = results[i].inception_score)
      fmt::print("IS {:.4f} ± {:.4f} ({}: {} splits)\n", is->mean, is->std, o.sources[i],
                 is->splits.size());
  if (!o.out.empty()) write_report(o, results, fid, sfid, pr, seconds, world.size());
  spdlog::info("{:.1f} s on {} rank(s), device {}", seconds, world.size(), device.str());
  return kOk;
}

}  // namespace

void add_fid_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "fid",
      "Frechet Inception Distance between two sets of images (pytorch-fid's network and "
      "preprocessing) and sFID (its spatial features), or the Inception statistics of one "
      "(--save-stats); each image set's Inception Score; and the precision and recall of two "
      "sets of images");
  cmd->add_option("sources", o->sources,
                  "Two sets: samples .npz (arr_0), a shard .h5, a manifest.json or its "
                  "directory, or a statistics .npz (mu, sigma; mu_s, sigma_s for sFID); one set "
                  "of images: its "
                  "Inception Score and, with --save-stats, its statistics")
      ->required()
      ->expected(1, 2);
  cmd->add_option("--inception", o->inception,
                  "FID's Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                  "as released (torch.save's legacy format and its zip format are both read)");
  cmd->add_option("--num", o->num, "Use the first N images of each set (default: all)");
  cmd->add_option("--batch", o->batch, "Images per network call on each rank");
  add_device_option(*cmd, o->device);
  cmd->add_option("--save-stats", o->save_stats,
                  "Write the set's mu and sigma to FILE.npz (pytorch-fid's --save-stats format), "
                  "and sFID's as mu_s and sigma_s");
  cmd->add_option("--is-splits", o->is_splits,
                  "Inception Score: the splits of each set of images (improved-gan's 10; 0 = no "
                  "score; a set with fewer images gets none)");
  cmd->add_option("--pr-k", o->pr_k,
                  "Precision and recall of two sets of images: the first set's share in the "
                  "second's manifold and the other way, with balls to the k-th nearest neighbour "
                  "(guided-diffusion's 3; 0 = off)");
  cmd->add_option("--out", o->out, "Also write the result to FILE.json");
  cmd->callback([o, &exit_code] {
    exit_code = run_on_world([&](parallel::World& world) { return run(*o, world); });
  });
}

}  // namespace difftrain::cli
