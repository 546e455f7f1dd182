#include "convert.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <ctime>
#include <exception>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "data/error.hpp"
#include "data/sample_order.hpp"
#include "data/shard_writer.hpp"
#include "progress.hpp"
#include "resize.hpp"
#include "source.hpp"

namespace difftrain::h5shard {
namespace {

namespace fs = std::filesystem;
using data::Error;

constexpr uint64_t kHoldoutTag = 0x686f6c646f7574ULL;  // "holdout"
constexpr int64_t kDefaultShardBytes = int64_t{256} << 20;

Source open_source(const ConvertOptions& o) {
  if (o.inputs.empty()) throw Error("no --input given");
  // With a holdout the split is made here, from the input's training files.
  const std::string file_split = o.holdout ? "train" : o.split;
  if (o.format == "idx") return open_idx(o.inputs, file_split);
  if (o.format == "cifar") return open_cifar(o.inputs, file_split, o.cifar_labels);
  if (o.format == "npy") return open_npy(o.inputs);
  if (o.format == "images") {
    if (o.inputs.size() != 1) throw Error("--format images takes one folder as --input");
    if (!o.holdout && !o.split.empty() && !fs::is_directory(fs::path(o.inputs[0]) / o.split))
      throw Error(o.inputs[0] + ": no '" + o.split +
                  "' sub-folder: use --holdout F to hold out part of the images");
    return open_images(o.inputs[0], file_split, o.channels, o.no_labels);
  }
  throw Error("unknown --format '" + o.format + "' (idx, cifar, images or npy)");
}

// Runs f(0..n-1) on up to `threads` threads. Indices are claimed in order, so every index below
// a failing one has run when the workers stop: the error of the lowest failing index is rethrown,
// the same one a sequential run would report.
template <typename F>
void parallel_for(int64_t n, int threads, F f) {
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;
  int64_t error_index = n;
  auto work = [&] {
    for (int64_t i; !failed && (i = next++) < n;) {
      try {
        f(i);
      } catch (...) {
        const std::lock_guard lock(error_mutex);
        if (i < error_index) {
          error_index = i;
          error = std::current_exception();
        }
        failed = true;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < std::min<int64_t>(threads, n); ++t)
    pool.emplace_back(work);
  work();
  for (std::thread& t : pool)
    t.join();
  if (error) std::rethrow_exception(error);
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int64_t shard_count(const ConvertOptions& o, int64_t n, int64_t sample_bytes) {
  if (o.shards && o.samples_per_shard)
    throw Error("give --shards or --samples-per-shard, not both");
  int64_t k = 0;
  if (o.shards) {
    k = *o.shards;
  } else {
    const int64_t m = o.samples_per_shard ? *o.samples_per_shard
                                          : std::max<int64_t>(1, kDefaultShardBytes / sample_bytes);
    if (m < 1) throw Error("--samples-per-shard must be at least 1");
    k = (n + m - 1) / m;
  }
  if (k < 1 || k > n)
    throw Error(std::to_string(k) + " shards for " + std::to_string(n) +
                " samples: every shard needs at least one sample");
  return k;
}

struct Classes {
  bool labeled = false;
  int64_t count = 0;
  std::vector<std::string> names;  // empty or count names
};

// Labels are kept unless --no-labels; the class count comes from the names (given or found with
// the input), else the format (CIFAR), else the largest label.
Classes resolve_classes(const Source& src, const ConvertOptions& o) {
  Classes c;
  c.labeled = !src.labels.empty() && !o.no_labels;
  if (!c.labeled) return c;
  c.names = o.class_names.empty() ? src.class_names : o.class_names;
  const auto max_it = std::max_element(src.labels.begin(), src.labels.end());
  c.count = !c.names.empty() ? static_cast<int64_t>(c.names.size())
                             : (src.num_classes ? src.num_classes : *max_it + 1);
  if (src.num_classes && c.count != src.num_classes)
    throw Error(std::to_string(c.names.size()) + " class names for the " +
                std::to_string(src.num_classes) + " classes of " + src.files.front());
  if (*max_it >= c.count)
    throw Error(src.describe(max_it - src.labels.begin()) + " has label " +
                std::to_string(*max_it) + " but there are only " + std::to_string(c.count) +
                " classes");
  return c;
}

// --name, else the output directory's name; it prefixes the shard file names.
std::string set_name(const ConvertOptions& o) {
  if (!o.name.empty()) {
    if (o.name.find_first_of("/\\") != std::string::npos)
      throw Error("--name '" + o.name + "' must not contain a path separator");
    return o.name;
  }
  fs::path dir = fs::absolute(o.out).lexically_normal();
  if (!dir.has_filename()) dir = dir.parent_path();  // "out/" has an empty file name
  const std::string name = dir.filename().string();
  return name.empty() ? "shard" : name;
}

// How the set was made, for the manifest's "source".
nlohmann::ordered_json provenance(const ConvertOptions& o, const Source& src) {
  std::vector<std::string> inputs;
  for (const std::string& f : src.files)
    inputs.push_back(fs::absolute(f).lexically_normal().string());
  nlohmann::ordered_json j{{"tool", "h5shard"},    {"tool_version", DIFFTRAIN_VERSION},
                           {"format", o.format},   {"inputs", inputs},
                           {"split", o.split},     {"source_samples", src.size},
                           {"created", utc_now()}, {"command", o.command}};
  if (o.holdout) {
    j["holdout"] = *o.holdout;
    j["holdout_seed"] = o.holdout_seed;
  }
  if (o.resize) j["resize"] = *o.resize;
  return j;
}

}  // namespace

std::vector<int64_t> split_indices(int64_t n, const std::string& split,
                                   std::optional<double> holdout, uint64_t seed) {
  std::vector<int64_t> all(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    all[static_cast<std::size_t>(i)] = i;
  if (!holdout) return all;
  if (*holdout <= 0 || *holdout >= 1) throw Error("--holdout must be a fraction in (0, 1)");
  if (split != "train" && split != "test")
    throw Error("--holdout needs --split train or --split test (which part to write)");
  const auto held = static_cast<int64_t>(std::llround(*holdout * static_cast<double>(n)));
  const std::vector<int64_t> perm = data::permutation(n, data::hash_key(seed, kHoldoutTag, 0));
  std::vector<int64_t> out = split == "test"
                                 ? std::vector<int64_t>(perm.begin(), perm.begin() + held)
                                 : std::vector<int64_t>(perm.begin() + held, perm.end());
  std::sort(out.begin(), out.end());
  return out;
}

data::Manifest convert(const ConvertOptions& o) {
  if (!o.split.empty() && o.split != "train" && o.split != "test")
    throw Error("--split must be train or test, not '" + o.split + "'");
  Source src = open_source(o);
  const std::vector<int64_t> indices = split_indices(src.size, o.split, o.holdout, o.holdout_seed);
  const auto n = static_cast<int64_t>(indices.size());
  if (n == 0) throw Error("no samples to write (the split is empty)");

  const Classes classes = resolve_classes(src, o);
  const bool labeled = classes.labeled;

  // Geometry.
  int64_t height = src.height;
  int64_t width = src.width;
  if (o.resize) {
    if (*o.resize < 1) throw Error("--resize must be positive");
    height = width = *o.resize;
  } else if (height == 0) {
    const Image first = src.read(indices.front());
    height = first.height;
    width = first.width;
  }
  const int64_t channels = src.channels;
  const int64_t sample_bytes = height * width * channels;
  const int64_t k = shard_count(o, n, sample_bytes);

  const fs::path out(o.out);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw Error(o.out + ": cannot create the output directory: " + ec.message());
  // An old manifest would describe shards this run is about to replace.
  fs::remove(out / "manifest.json", ec);

  const std::string name = set_name(o);

  const nlohmann::ordered_json source = provenance(o, src);
  const std::string first_input = source["inputs"].front().get<std::string>();

  const int threads = o.threads > 0
                          ? o.threads
                          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const int64_t block =
      std::max<int64_t>(1, std::min<int64_t>(1024, (int64_t{16} << 20) / sample_bytes));
  std::vector<uint8_t> pixels;
  std::vector<int64_t> labels;
  data::Manifest m;
  Progress progress("convert " + name, n);
  int64_t done = 0;
  for (int64_t s = 0; s < k; ++s) {
    const int64_t begin = s * n / k;
    const int64_t end = (s + 1) * n / k;
    const std::string file = fmt::format("{}-{:05d}-of-{:05d}.h5", name, s, k);
    data::ShardWriter writer(o.out, file,
                             data::ShardSpec{.num_samples = end - begin,
                                             .height = height,
                                             .width = width,
                                             .channels = channels,
                                             .labels = labeled,
                                             .compression = o.compression,
                                             .first_index = begin,
                                             .source = o.format + ": " + first_input});
    for (int64_t first = begin; first < end; first += block) {
      const int64_t count = std::min(block, end - first);
      pixels.resize(static_cast<std::size_t>(count * sample_bytes));
      labels.resize(static_cast<std::size_t>(count));
      parallel_for(count, threads, [&](int64_t j) {
        const int64_t i = indices[static_cast<std::size_t>(first + j)];
        Image img = src.read(i);
        if (o.resize) img = square_resize(img, *o.resize);
        if (img.height != height || img.width != width || img.channels != channels)
          throw Error(src.describe(i) + ": image is " + std::to_string(img.height) + "x" +
                      std::to_string(img.width) + ", the others " + std::to_string(height) + "x" +
                      std::to_string(width) + " (use --resize S)");
        std::copy(img.pixels.begin(), img.pixels.end(), pixels.begin() + j * sample_bytes);
        if (labeled) labels[static_cast<std::size_t>(j)] = src.labels[static_cast<std::size_t>(i)];
      });
      writer.append(pixels.data(), labeled ? labels.data() : nullptr, count);
      done += count;
      if (o.progress) progress.update(done);
    }
    m.shards.push_back(writer.finish());
  }
  if (o.progress) progress.finish();

  m.name = name;
  m.height = height;
  m.width = width;
  m.channels = channels;
  m.labels = labeled;
  m.num_classes = classes.count;
  m.class_names = classes.names;
  m.compression = h5::to_string(o.compression);
  m.source = source.dump();
  m.path = (out / "manifest.json").string();
  data::write_manifest(m, m.path);
  return m;
}

}  // namespace difftrain::h5shard
