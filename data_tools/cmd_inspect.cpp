// `h5shard inspect DIR|FILE`: counts, shapes, the label histogram, and a PNG grid of the first
// samples. A lone shard file is described as a set of one shard.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "data/error.hpp"
#include "data/h5.hpp"
#include "data/manifest.hpp"
#include "data/shard_layout.hpp"
#include "data/shard_reader.hpp"
#include "data/shard_set.hpp"
#include "image_codec.hpp"

namespace difftrain::h5shard {
namespace {

namespace fs = std::filesystem;

struct Options {
  std::string path;
  std::string grid;
  int64_t grid_count = 64;
};

// A manifest for a lone shard file, from what the file holds.
data::Manifest lone_shard(const std::string& path) {
  try {
    const h5::File f = h5::File::open(path);
    if (!f.has(data::shard::kImages)) f.fail("missing dataset 'images'");
    const auto shape = f.shape(data::shard::kImages);
    if (shape.size() != 4) f.fail("dataset 'images' is not [n, H, W, C]");
    data::Manifest m;
    m.path = (fs::path(path).parent_path() / "(no manifest)").string();
    m.name = fs::path(path).stem().string();
    m.height = shape[1];
    m.width = shape[2];
    m.channels = shape[3];
    m.compression = f.compression(data::shard::kImages);
    m.labels = f.has(data::shard::kLabels);
    if (m.labels) {
      const auto labels = f.read<int64_t>(data::shard::kLabels);
      m.num_classes = labels.empty() ? 1 : *std::max_element(labels.begin(), labels.end()) + 1;
    }
    m.shards.push_back({fs::path(path).filename().string(), shape[0], -1, ""});
    if (f.has_attr("source")) m.source = nlohmann::json(f.attr_string("source")).dump();
    return m;
  } catch (const h5::Error& e) {
    throw data::Error(e.what());
  }
}

void write_grid(const data::Manifest& m, const std::string& out, int64_t count) {
  count = std::min(count, m.num_samples());
  const auto cols = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(count))));
  const int64_t rows = (count + cols - 1) / cols;
  constexpr int64_t kGap = 2;
  // Three or more channels show as RGB (the first three), fewer as gray (the first).
  const int64_t h = m.height, w = m.width, c = m.channels >= 3 ? 3 : 1;
  Image grid{rows * (h + kGap) + kGap, cols * (w + kGap) + kGap, c, {}};
  grid.pixels.assign(static_cast<std::size_t>(grid.height * grid.width * c), 0);
  data::ShardSet shards(m);
  std::vector<uint8_t> sample(static_cast<std::size_t>(shards.sample_bytes()));
  for (int64_t i = 0; i < count; ++i) {
    shards.read(i, sample.data());
    const int64_t top = kGap + (i / cols) * (h + kGap);
    const int64_t left = kGap + (i % cols) * (w + kGap);
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t k = 0; k < c; ++k)
          grid.pixels[static_cast<std::size_t>(((top + y) * grid.width + left + x) * c + k)] =
              sample[static_cast<std::size_t>((y * w + x) * m.channels + k)];
  }
  write_png(out, grid);
  fmt::print("grid of the first {} samples: {}\n", count, out);
}

void inspect(const Options& o) {
  const bool lone = fs::is_regular_file(o.path) && fs::path(o.path).extension() != ".json";
  const data::Manifest m = lone ? lone_shard(o.path) : data::read_manifest(o.path);
  fmt::print("set        {}\n", m.name);
  fmt::print("manifest   {}\n", lone ? "(lone shard file)" : m.path);
  fmt::print("samples    {} in {} shard{}\n", m.num_samples(), m.shards.size(),
             m.shards.size() == 1 ? "" : "s");
  fmt::print("images     {} x {} x {} (H x W x C) uint8, compression {}\n", m.height, m.width,
             m.channels, m.compression);
  fmt::print("shards\n");
  std::vector<int64_t> histogram(static_cast<std::size_t>(m.labels ? m.num_classes : 0), 0);
  for (std::size_t i = 0; i < m.shards.size(); ++i) {
    const data::ShardInfo& s = m.shards[i];
    const h5::File f = data::open_shard(m, i);
    fmt::print("  {}  {} samples  {:.1f} MiB  {}\n", s.file, s.num_samples,
               static_cast<double>(fs::file_size(f.path())) / (1 << 20),
               s.checksum.empty() ? "-" : s.checksum);
    if (m.labels)
      for (const int64_t l : data::read_shard_labels(f, m))
        ++histogram[static_cast<std::size_t>(l)];
  }
  if (m.labels) {
    fmt::print("labels     {} classes\n", m.num_classes);
    const int64_t most = *std::max_element(histogram.begin(), histogram.end());
    for (std::size_t k = 0; k < histogram.size(); ++k) {
      const std::string name = k < m.class_names.size() ? m.class_names[k] : "";
      const auto bar = static_cast<std::size_t>(most ? histogram[k] * 40 / most : 0);
      fmt::print("  {:>4} {:<16} {:>9}  {}\n", k, name, histogram[k], std::string(bar, '#'));
    }
  } else {
    fmt::print("labels     none\n");
  }
  fmt::print("source     {}\n", m.source);
  if (!o.grid.empty()) write_grid(m, o.grid, o.grid_count);
}

}  // namespace

void add_inspect_command(CLI::App& app, int& exit_code) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd =
      app.add_subcommand("inspect", "Counts, shapes, label histogram and a grid of samples");
  cmd->add_option("path", o->path, "Shard directory, its manifest.json, or one shard .h5")
      ->required();
  cmd->add_option("--grid", o->grid, "Write a PNG grid of the first samples here");
  cmd->add_option("--grid-count", o->grid_count, "Samples in the grid")
      ->default_val(64)
      ->check(CLI::Range(int64_t{1}, std::numeric_limits<int64_t>::max(), "POSITIVE"));
  cmd->callback([o, &exit_code] {
    try {
      inspect(*o);
      exit_code = kOk;
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      exit_code = kBadInput;
    }
  });
}

}  // namespace difftrain::h5shard
