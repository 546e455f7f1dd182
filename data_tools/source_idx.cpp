// MNIST-style IDX files: a big-endian header of magic
// 0x0000 TT DD and DD dimension sizes, then the data. Read through zlib, so .gz or plain.
#include <zlib.h>

#include <filesystem>
#include <limits>

#include "data/error.hpp"
#include "source.hpp"

namespace difftrain::h5shard {
namespace {

namespace fs = std::filesystem;
using data::Error;

struct IdxArray {
  std::string path;
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path), f_(gzopen(path.c_str(), "rb")) {
    if (!f_) throw Error(path + ": cannot open");
    gzbuffer(f_, 1 << 18);
  }
  ~GzFile() { gzclose(f_); }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  // Reads up to n bytes; fewer only at the end of the data.
  std::size_t read(void* out, std::size_t n) {
    std::size_t done = 0;
    while (done < n) {
      const auto want = static_cast<unsigned>(std::min<std::size_t>(n - done, 1u << 30));
      const int got = gzread(f_, static_cast<char*>(out) + done, want);
      if (got < 0) {
        int code = 0;
        throw Error(path_ + ": corrupt gzip data (" + gzerror(f_, &code) + ")");
      }
      if (got == 0) break;
      done += static_cast<std::size_t>(got);
    }
    return done;
  }
  bool at_end() { return gzgetc(f_) == -1; }

 private:
  std::string path_;
  gzFile f_;
};

IdxArray read_idx(const std::string& path) {
  if (!fs::is_regular_file(path)) throw Error(path + ": no such file");
  GzFile f(path);
  uint8_t magic[4];
  if (f.read(magic, 4) != 4 || magic[0] != 0 || magic[1] != 0 || magic[3] == 0 || magic[3] > 4)
    throw Error(path + ": not an IDX file (bad magic number)");
  if (magic[2] != 0x08)
    throw Error(path + ": IDX element type 0x" + std::to_string(magic[2]) +
                " is not unsigned byte (0x08)");
  IdxArray a{path, {}, {}};
  int64_t total = 1;
  for (int d = 0; d < magic[3]; ++d) {
    uint8_t b[4];
    if (f.read(b, 4) != 4) throw Error(path + ": truncated IDX header");
    const int64_t n = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | b[3];
    if (n <= 0) throw Error(path + ": IDX dimension " + std::to_string(d) + " is 0");
    a.dims.push_back(n);
    total *= n;
    if (total > (int64_t{1} << 40)) throw Error(path + ": IDX dimensions are implausibly large");
  }
  a.data.resize(static_cast<std::size_t>(total));
  const std::size_t got = f.read(a.data.data(), a.data.size());
  if (got != a.data.size())
    throw Error(path + ": truncated: " + std::to_string(got) + " data bytes of " +
                std::to_string(total) + " the header announces");
  if (!f.at_end()) throw Error(path + ": unexpected bytes after the IDX data");
  return a;
}

std::string find_in(const fs::path& dir, const std::string& stem) {
  for (const std::string& name : {stem, stem + ".gz"})
    if (fs::is_regular_file(dir / name)) return (dir / name).string();
  return "";
}

}  // namespace

Source open_idx(const std::vector<std::string>& inputs, const std::string& split) {
  std::vector<std::string> files = inputs;
  if (inputs.size() == 1 && fs::is_directory(inputs[0])) {
    const std::string prefix = split == "test" ? "t10k" : "train";
    const std::string images = find_in(inputs[0], prefix + "-images-idx3-ubyte");
    if (images.empty())
      throw Error(inputs[0] + ": no " + prefix + "-images-idx3-ubyte[.gz] in this directory");
    files = {images};
    const std::string labels = find_in(inputs[0], prefix + "-labels-idx1-ubyte");
    if (!labels.empty()) files.push_back(labels);
  }
  IdxArray images, labels;
  for (const std::string& path : files) {
    IdxArray a = read_idx(path);
    IdxArray& slot = a.dims.size() == 1 ? labels : images;
    if (!slot.path.empty())
      throw Error(path + ": a second " + (a.dims.size() == 1 ? "labels" : "images") +
                  " file (after " + slot.path + ")");
    slot = std::move(a);
  }
  if (images.path.empty()) throw Error("no IDX images file among the inputs (3 or 4 dimensions)");
  if (images.dims.size() < 3)
    throw Error(images.path + ": IDX images need 3 dimensions [N, H, W] or 4 [N, H, W, C]");
  Source s;
  s.size = images.dims[0];
  s.height = images.dims[1];
  s.width = images.dims[2];
  s.channels = images.dims.size() == 4 ? images.dims[3] : 1;
  s.files.push_back(images.path);
  if (!labels.path.empty()) {
    if (labels.dims[0] != s.size)
      throw Error(labels.path + ": " + std::to_string(labels.dims[0]) + " labels for " +
                  std::to_string(s.size) + " images in " + images.path);
    s.labels.assign(labels.data.begin(), labels.data.end());
    s.files.push_back(labels.path);
  }
  s.read = memory_reader(std::move(images.data), s.height, s.width, s.channels);
  s.describe = describe_in(s.files);
  return s;
}

}  // namespace difftrain::h5shard
