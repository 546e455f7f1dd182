// `difftrain fid`: the Fréchet Inception Distance between two sets of images (samples, shards),
// or the Inception statistics of one set (--save-stats), with pytorch-fid's network, weights and
// preprocessing. Under mpirun each rank takes a slice of every set and the float64 sums are
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

namespace difftrain::cli {
namespace {

namespace fs = std::filesystem;

struct Options {
  std::vector<std::string> sources;
  std::string inception;
  int64_t num = 0;  // 0 = every image of each set
  int64_t batch = 64;
  std::string device = "auto";
  std::string save_stats;
  std::string out;
};

// A set of images, or statistics already computed from one.
struct Source {
  std::string path;
  bool statistics = false;  // an .npz with mu and sigma
};

Source classify(const std::string& path) {
  if (!fs::exists(path)) throw std::invalid_argument(path + ": no such file or directory");
  const bool npz = fs::path(path).extension() == ".npz";
  return {path, npz && quality::holds_statistics(path)};
}

// This rank's share [begin, end) of n images, in rank order.
std::pair<int64_t, int64_t> share(int64_t n, const parallel::World& world) {
  return {n * world.rank() / world.size(), n * (world.rank() + 1) / world.size()};
}

quality::FeatureStatistics image_statistics(const std::string& path, int64_t num, int64_t batch,
                                            quality::FidInception& net, c10::Device device,
                                            parallel::Communicator& comm,
                                            const parallel::World& world) {
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
  const auto t0 = std::chrono::steady_clock::now();
  auto last_report = t0;
  for (int64_t i = 0; i < end - begin; i += batch) {
    sums.add(
        quality::pool3_features(net, mine.pixels.narrow(0, i, std::min(batch, end - begin - i))));
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
  comm.all_reduce(count, parallel::ReduceOp::sum);
  sums.count = count.item<int64_t>();
  return quality::statistics_of(sums);
}

void write_report(const Options& o, const std::vector<quality::FeatureStatistics>& stats,
                  double fid, double seconds, int ranks) {
  nlohmann::ordered_json sets = nlohmann::ordered_json::array();
  for (std::size_t i = 0; i < stats.size(); ++i)
    sets.push_back({{"path", o.sources[i]}, {"images", stats[i].count}});
  const nlohmann::ordered_json j = {{"fid", fid},
                                    {"sets", sets},
                                    {"inception", o.inception},
                                    {"features", quality::kPool3Features},
                                    {"seconds", seconds},
                                    {"ranks", ranks}};
  std::ofstream f(o.out);
  f << j.dump(2) << "\n";
  if (!f) throw std::runtime_error(o.out + ": cannot write the report");
}

int run(const Options& o, parallel::World& world) {
  if (o.batch < 1)
    throw std::invalid_argument(fmt::format("--batch must be >= 1, not {}", o.batch));
  if (o.num < 0) throw std::invalid_argument("--num must be >= 0 (0 = all images)");
  if (o.sources.size() == 1 && o.save_stats.empty())
    throw std::invalid_argument(
        "one set of images: give a second to compare it with, or --save-stats FILE.npz to keep "
        "its statistics");
  if (o.sources.size() == 2 && !o.save_stats.empty())
    throw std::invalid_argument("--save-stats takes one set of images, not two");
  std::vector<Source> sources;
  for (const std::string& path : o.sources)
    sources.push_back(classify(path));

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
  std::vector<quality::FeatureStatistics> stats;
  for (const Source& s : sources)
    stats.push_back(s.statistics
                        ? quality::read_statistics(s.path)
                        : image_statistics(s.path, o.num, o.batch, net, device, *comm, world));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (world.rank() != 0) return kOk;

  if (!o.save_stats.empty()) {
    quality::write_statistics(o.save_stats, stats[0]);
    spdlog::info("wrote the statistics of {} images to {} ({:.1f} s)", stats[0].count, o.save_stats,
                 seconds);
    return kOk;
  }
  const double fid = quality::frechet_distance(stats[0], stats[1]);
  const auto images = [](const quality::FeatureStatistics& s) {
    return s.count > 0 ? fmt::format("{} images", s.count) : std::string("statistics");
  };
  fmt::print("FID {:.4f} ({}: {}; {}: {}; Inception pool3, {} features)\n", fid, o.sources[0],
             images(stats[0]), o.sources[1], images(stats[1]), quality::kPool3Features);
  if (!o.out.empty()) write_report(o, stats, fid, seconds, world.size());
  spdlog::info("{:.1f} s on {} rank(s), device {}", seconds, world.size(), device.str());
  return kOk;
}

}  // namespace

void add_fid_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "fid",
      "Frechet Inception Distance between two sets of images (pytorch-fid's network and "
      "preprocessing), or the Inception statistics of one (--save-stats)");
  cmd->add_option("sources", o->sources,
                  "Two sets: samples .npz (arr_0), a shard .h5, a manifest.json or its "
                  "directory, or a statistics .npz (mu, sigma); one with --save-stats")
      ->required()
      ->expected(1, 2);
  cmd->add_option("--inception", o->inception,
                  "FID's Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                  "(re-saved in torch.save's zip format)");
  cmd->add_option("--num", o->num, "Use the first N images of each set (default: all)");
  cmd->add_option("--batch", o->batch, "Images per network call on each rank");
  add_device_option(*cmd, o->device);
  cmd->add_option("--save-stats", o->save_stats,
                  "Write the set's mu and sigma to FILE.npz (pytorch-fid's --save-stats format)");
  cmd->add_option("--out", o->out, "Also write the result to FILE.json");
  cmd->callback([o, &exit_code] {
    exit_code = run_on_world([&](parallel::World& world) { return run(*o, world); });
  });
}

}  // namespace difftrain::cli
