#include "data/shard_reader.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>

#include "data/checksum.hpp"
#include "data/error.hpp"
#include "data/shard_layout.hpp"

namespace difftrain::data {
namespace {

namespace fs = std::filesystem;

// Runs f, turning the HDF5 layer's errors (which already name the file) into data::Error.
template <typename F>
auto data_errors(F f) {
  try {
    return f();
  } catch (const h5::Error& e) {
    throw Error(e.what());
  }
}

void check_structure(const h5::File& f, const Manifest& m, const ShardInfo& info) {
  if (!f.has(shard::kImages)) f.fail("missing dataset 'images'");
  const std::string dtype = f.dtype(shard::kImages);
  if (dtype != "uint8") f.fail("dataset 'images' has dtype " + dtype + ", expected uint8");
  const auto shape = f.shape(shard::kImages);
  if (shape.size() != 4)
    f.fail("dataset 'images' has rank " + std::to_string(shape.size()) + " " +
           fmt::format("{}", shape) + ", expected 4 [n, H, W, C]");
  if (shape[0] == 0) f.fail("the shard is empty (dataset 'images' has 0 samples)");
  const std::vector<int64_t> want{info.num_samples, m.height, m.width, m.channels};
  if (shape != want)
    f.fail("dataset 'images' has shape " + fmt::format("{}", shape) + ", the manifest says " +
           fmt::format("{}", want));
  const std::string compression = f.compression(shard::kImages);
  if (compression == "lzf" && !h5::filter_available(h5::Compression::lzf))
    f.fail("images are lzf-compressed and the lzf filter is not installed (hdf5-plugin-lzf)");
  if (compression == "other") f.fail("images use an HDF5 filter this build cannot read");
  if (!m.labels) return;
  if (!f.has(shard::kLabels)) f.fail("missing dataset 'labels' (the manifest has labels)");
  const std::string ltype = f.dtype(shard::kLabels);
  if (ltype.find("int") == std::string::npos)
    f.fail("dataset 'labels' has dtype " + ltype + ", expected int64");
  const auto lshape = f.shape(shard::kLabels);
  if (lshape != std::vector<int64_t>{info.num_samples})
    f.fail("dataset 'labels' has shape " + fmt::format("{}", lshape) + ", expected [" +
           std::to_string(info.num_samples) + "]");
}

}  // namespace

h5::File open_shard(const Manifest& m, std::size_t i) {
  const ShardInfo& info = m.shards.at(i);
  const std::string path = m.shard_path(i);
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw Error(path + ": missing shard (no such file)");
  const auto bytes = static_cast<int64_t>(fs::file_size(path, ec));
  if (ec) throw Error(path + ": cannot read the file size: " + ec.message());
  if (info.bytes >= 0 && bytes != info.bytes)
    throw Error(path + ": file is " + std::to_string(bytes) + " bytes, the manifest says " +
                std::to_string(info.bytes) + (bytes < info.bytes ? " (truncated)" : ""));
  return data_errors([&] {
    h5::File f = h5::File::open(path);
    check_structure(f, m, info);
    return f;
  });
}

std::vector<int64_t> read_shard_labels(const h5::File& f, const Manifest& m) {
  return data_errors([&] {
    std::vector<int64_t> labels = f.read<int64_t>(shard::kLabels);
    const auto [lo, hi] = std::minmax_element(labels.begin(), labels.end());
    if (lo != labels.end() && (*lo < 0 || *hi >= m.num_classes))
      f.fail("labels range over [" + std::to_string(*lo) + ", " + std::to_string(*hi) +
             "], outside the manifest's " + std::to_string(m.num_classes) + " classes");
    return labels;
  });
}

std::string shard_checksum(const h5::File& f) {
  return data_errors([&] {
    Crc32 crc;
    const h5::Rows images = f.rows(shard::kImages);
    const int64_t row_bytes = std::max<int64_t>(images.row_elements(), 1);
    const int64_t block = std::max<int64_t>(1, (int64_t{32} << 20) / row_bytes);
    std::vector<uint8_t> buf;
    for (int64_t first = 0; first < images.size(); first += block) {
      const int64_t count = std::min(block, images.size() - first);
      buf.resize(static_cast<std::size_t>(count * row_bytes));
      images.read(first, count, buf.data());
      crc.update(buf.data(), buf.size());
    }
    if (f.has(shard::kLabels)) {
      // HDF5 converts to native int64; the checksum is over little-endian bytes (x86, ARM).
      const std::vector<int64_t> labels = f.read<int64_t>(shard::kLabels);
      crc.update(labels.data(), labels.size() * sizeof(int64_t));
    }
    return crc.str();
  });
}

void check_checksum(const h5::File& f, const ShardInfo& info) {
  if (info.checksum.empty()) return;
  const std::string got = shard_checksum(f);
  if (got != info.checksum)
    throw Error(f.path() + ": checksum mismatch: the data hashes to " + got +
                ", the manifest says " + info.checksum);
}

void verify_shard(const Manifest& m, std::size_t i) {
  const h5::File f = open_shard(m, i);
  if (m.labels) read_shard_labels(f, m);
  check_checksum(f, m.shards[i]);
}

}  // namespace difftrain::data
