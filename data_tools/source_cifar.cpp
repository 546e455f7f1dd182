// CIFAR-10 / CIFAR-100 binary batches: records of label byte(s) and 3072 pixel bytes as three
// 32x32 planes (R, G, B). CIFAR-10 records have one label byte, CIFAR-100 two (coarse, fine).
#include <algorithm>
#include <filesystem>
#include <fstream>

#include "data/error.hpp"
#include "source.hpp"

namespace difftrain::h5shard {
namespace {

namespace fs = std::filesystem;
using data::Error;

constexpr int64_t kSide = 32;
constexpr int64_t kPixels = kSide * kSide * 3;

std::vector<std::string> read_lines(const fs::path& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

std::vector<std::string> batch_files(const fs::path& dir, const std::string& split) {
  const bool test = split == "test";
  if (fs::is_regular_file(dir / "train.bin") || fs::is_regular_file(dir / "test.bin"))
    return {(dir / (test ? "test.bin" : "train.bin")).string()};
  if (test) return {(dir / "test_batch.bin").string()};
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("data_batch_", 0) == 0 && e.path().extension() == ".bin")
      files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw Error(dir.string() + ": no CIFAR data_batch_*.bin or train.bin here");
  return files;
}

// 10 or 100, from the file size (record of 3073 or 3074 bytes), else from the file name.
int variant(const std::string& path, int64_t bytes) {
  const bool ten = bytes % (kPixels + 1) == 0;
  const bool hundred = bytes % (kPixels + 2) == 0;
  if (bytes == 0) throw Error(path + ": empty file");
  if (ten && !hundred) return 10;
  if (hundred && !ten) return 100;
  if (ten && hundred) {
    const std::string name = fs::path(path).filename().string();
    return name == "train.bin" || name == "test.bin" ? 100 : 10;
  }
  throw Error(path + ": " + std::to_string(bytes) +
              " bytes is not a whole number of CIFAR-10 (3073-byte) or CIFAR-100 (3074-byte) "
              "records (truncated?)");
}

}  // namespace

Source open_cifar(const std::vector<std::string>& inputs, const std::string& split,
                  const std::string& cifar100_labels) {
  if (cifar100_labels != "fine" && cifar100_labels != "coarse")
    throw Error("--cifar-labels must be fine or coarse, not '" + cifar100_labels + "'");
  std::vector<std::string> files = inputs;
  if (inputs.size() == 1 && fs::is_directory(inputs[0])) files = batch_files(inputs[0], split);
  Source s;
  s.height = s.width = kSide;
  s.channels = 3;
  std::vector<uint8_t> pixels;
  int kind = 0;
  for (const std::string& path : files) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path + ": no such file");
    const auto bytes = static_cast<int64_t>(fs::file_size(path));
    const int v = variant(path, bytes);
    if (kind && v != kind)
      throw Error(path + ": a CIFAR-" + std::to_string(v) + " file among CIFAR-" +
                  std::to_string(kind) + " files");
    kind = v;
    const int64_t record = kPixels + (v == 10 ? 1 : 2);
    std::vector<uint8_t> buf(static_cast<std::size_t>(bytes));
    if (!in.read(reinterpret_cast<char*>(buf.data()), bytes)) throw Error(path + ": read error");
    const int64_t n = bytes / record;
    const std::size_t base = pixels.size();
    pixels.resize(base + static_cast<std::size_t>(n * kPixels));
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* r = buf.data() + i * record;
      const int64_t label = v == 10 ? r[0] : (cifar100_labels == "coarse" ? r[0] : r[1]);
      const int64_t classes = v == 10 ? 10 : (cifar100_labels == "coarse" ? 20 : 100);
      if (label >= classes)
        throw Error(path + ": record " + std::to_string(i) + " has label " + std::to_string(label) +
                    ", not below " + std::to_string(classes) + " (not a CIFAR-" +
                    std::to_string(v) + " file?)");
      s.labels.push_back(label);
      // CHW planes -> HWC.
      const uint8_t* planes = r + (v == 10 ? 1 : 2);
      uint8_t* out = pixels.data() + base + i * kPixels;
      for (int64_t p = 0; p < kSide * kSide; ++p)
        for (int64_t c = 0; c < 3; ++c)
          out[p * 3 + c] = planes[c * kSide * kSide + p];
    }
    s.files.push_back(path);
  }
  s.size = static_cast<int64_t>(s.labels.size());
  s.num_classes = kind == 10 ? 10 : (cifar100_labels == "coarse" ? 20 : 100);
  // The class names ship beside the batches.
  const fs::path dir = fs::path(files.front()).parent_path();
  const fs::path names =
      dir / (kind == 10 ? "batches.meta.txt" : (cifar100_labels + "_label_names.txt"));
  if (fs::is_regular_file(names)) s.class_names = read_lines(names);
  s.read = memory_reader(std::move(pixels), kSide, kSide, 3);
  s.describe = describe_in(s.files);
  return s;
}

}  // namespace difftrain::h5shard
