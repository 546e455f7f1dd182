// Test helpers that make and read data files independently of the code under test: raw HDF5
// C API shards in the documented layout, PNG (libpng), .npy, CIFAR records, IDX via zlib, and
// running the h5shard binary.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace difftrain::testing {

// A fresh directory under the system temp dir, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct RunResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};
// Runs a shell command and collects its output.
RunResult run(const std::string& command);
// The h5shard binary with arguments.
RunResult h5shard(const std::string& args);

// An IDX file, gzipped or not, read with zlib.
struct Idx {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};
Idx read_idx(const std::string& path);

// Writes a PNG of 1 (gray) or 3 (RGB) channels with libpng's own API.
void write_png(const std::string& path, int height, int width, int channels,
               const std::vector<uint8_t>& hwc);
// Writes a JPEG (libjpeg) at quality 100.
void write_jpeg(const std::string& path, int height, int width, int channels,
                const std::vector<uint8_t>& hwc);
// Writes a .npy (version 1.0) with dtype descr (e.g. "|u1", "<i8") and shape.
void write_npy(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
               const void* data, std::size_t bytes);

// Writes a shard with the HDF5 C API only: images [n, H, W, C] of the given HDF5 type (chunked
// one sample per chunk when chunked, else contiguous) and labels int64 [n] when labels is not
// empty. Returns the CRC-32 string of images and labels as the manifest records it.
std::string write_raw_shard(const std::string& path, const std::vector<int64_t>& shape,
                            const std::vector<uint8_t>& images, const std::vector<int64_t>& labels,
                            bool chunked = true);
// Reads a whole uint8 dataset with the HDF5 C API.
std::vector<uint8_t> read_raw_uint8(const std::string& path, const std::string& dataset,
                                    std::vector<int64_t>* shape = nullptr);
std::vector<int64_t> read_raw_int64(const std::string& path, const std::string& dataset);
// Overwrites row `row` of a uint8 [n, ...] dataset in place with `value` everywhere.
void poke_row(const std::string& path, const std::string& dataset, int64_t row, uint8_t value);

// A set written by the test: shards of the given sizes, HxWxC images whose pixels encode the
// sample's global index (pixel_value), labels index % classes, and its manifest.json.
struct SyntheticSet {
  std::string manifest;
  int64_t num_samples = 0;
  int64_t height = 0, width = 0, channels = 0, classes = 0;
};
uint8_t pixel_value(int64_t index, int64_t y, int64_t x, int64_t c);
// `pixels` (index, y, x, c) -> value: pixel_value unless given (a set whose images show their
// labels, for a classifier to learn).
using PixelFn = std::function<uint8_t(int64_t index, int64_t y, int64_t x, int64_t c)>;
SyntheticSet write_synthetic_set(const std::string& dir, const std::vector<int64_t>& shard_sizes,
                                 int64_t height, int64_t width, int64_t channels, int64_t classes,
                                 const PixelFn& pixels = pixel_value);

std::string read_text(const std::string& path);
void write_text(const std::string& path, const std::string& text);

}  // namespace difftrain::testing
