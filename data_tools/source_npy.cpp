// NumPy .npy arrays: magic "\x93NUMPY", version, a little-endian header length, a Python dict
// literal {'descr': ..., 'fortran_order': ..., 'shape': (...)}, then the C-order data.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include "data/error.hpp"
#include "source.hpp"

namespace difftrain::h5shard {
namespace {

namespace fs = std::filesystem;
using data::Error;

struct NpyArray {
  std::string path;
  std::string descr;  // e.g. |u1, <i8
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;
};

std::string header_field(const std::string& path, const std::string& header, const std::string& key,
                         const std::string& value_pattern) {
  const std::regex re("['\"]" + key + "['\"]\\s*:\\s*(" + value_pattern + ")");
  std::smatch m;
  if (!std::regex_search(header, m, re))
    throw Error(path + ": .npy header has no readable '" + key + "'");
  return m[1].str();
}

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": no such file");
  char magic[8];
  if (!in.read(magic, 8) || std::string(magic, 6) != "\x93NUMPY")
    throw Error(path + ": not a .npy file (bad magic)");
  const int major = static_cast<uint8_t>(magic[6]);
  uint32_t header_len = 0;
  uint8_t len[4] = {0, 0, 0, 0};
  if (major == 1) {
    if (!in.read(reinterpret_cast<char*>(len), 2)) throw Error(path + ": truncated .npy header");
    header_len = len[0] | (uint32_t{len[1]} << 8);
  } else if (major == 2 || major == 3) {
    if (!in.read(reinterpret_cast<char*>(len), 4)) throw Error(path + ": truncated .npy header");
    header_len =
        len[0] | (uint32_t{len[1]} << 8) | (uint32_t{len[2]} << 16) | (uint32_t{len[3]} << 24);
  } else {
    throw Error(path + ": .npy version " + std::to_string(major) + " is not supported");
  }
  if (header_len > (1u << 20)) throw Error(path + ": implausible .npy header length");
  std::string header(header_len, '\0');
  if (!in.read(header.data(), header_len)) throw Error(path + ": truncated .npy header");

  NpyArray a{path, header_field(path, header, "descr", "'[^']*'|\"[^\"]*\""), {}, {}};
  a.descr = a.descr.substr(1, a.descr.size() - 2);
  if (header_field(path, header, "fortran_order", "True|False") == "True")
    throw Error(path + ": Fortran-order arrays are not supported (save with C order)");
  const std::string shape = header_field(path, header, "shape", "\\([^)]*\\)");
  const std::regex num("\\d+");
  for (auto it = std::sregex_iterator(shape.begin(), shape.end(), num);
       it != std::sregex_iterator(); ++it)
    a.shape.push_back(std::stoll(it->str()));

  const char order = a.descr.empty() ? '?' : a.descr[0];
  if (order == '>' && a.descr.substr(2) != "1")
    throw Error(path + ": big-endian arrays (" + a.descr + ") are not supported");
  const std::string kind =
      (order == '<' || order == '>' || order == '|' || order == '=') ? a.descr.substr(1) : a.descr;
  if (kind.size() != 2 || (kind[0] != 'u' && kind[0] != 'i') ||
      std::string("1248").find(kind[1]) == std::string::npos)
    throw Error(path + ": dtype '" + a.descr + "' is not an integer type");
  a.descr = kind;
  int64_t count = 1;
  for (const int64_t d : a.shape)
    count *= d;
  const int64_t bytes = count * (kind[1] - '0');
  const auto data_bytes = static_cast<int64_t>(fs::file_size(path)) - in.tellg();
  if (data_bytes != bytes)
    throw Error(path + ": holds " + std::to_string(data_bytes) + " data bytes, the header's " +
                "shape and dtype need " + std::to_string(bytes) +
                (data_bytes < bytes ? " (truncated)" : ""));
  a.data.resize(static_cast<std::size_t>(bytes));
  if (!in.read(reinterpret_cast<char*>(a.data.data()), bytes)) throw Error(path + ": read error");
  return a;
}

template <typename T>
std::vector<int64_t> widen(const std::vector<uint8_t>& raw) {
  std::vector<int64_t> out(raw.size() / sizeof(T));
  for (std::size_t i = 0; i < out.size(); ++i) {
    T v;
    std::memcpy(&v, raw.data() + i * sizeof(T), sizeof(T));
    out[i] = static_cast<int64_t>(v);
  }
  return out;
}

std::vector<int64_t> labels_of(const NpyArray& a) {
  const char k = a.descr[0];
  switch (a.descr[1]) {
    case '1':
      return k == 'u' ? widen<uint8_t>(a.data) : widen<int8_t>(a.data);
    case '2':
      return k == 'u' ? widen<uint16_t>(a.data) : widen<int16_t>(a.data);
    case '4':
      return k == 'u' ? widen<uint32_t>(a.data) : widen<int32_t>(a.data);
    default:
      return k == 'u' ? widen<uint64_t>(a.data) : widen<int64_t>(a.data);
  }
}

}  // namespace

Source open_npy(const std::vector<std::string>& inputs) {
  NpyArray images, labels;
  for (const std::string& path : inputs) {
    NpyArray a = read_npy(path);
    if (a.shape.size() == 1) {
      if (!labels.path.empty()) throw Error(path + ": a second labels array after " + labels.path);
      labels = std::move(a);
    } else if (a.shape.size() == 3 || a.shape.size() == 4) {
      if (!images.path.empty()) throw Error(path + ": a second images array after " + images.path);
      if (a.descr != "u1") throw Error(path + ": images must be uint8 (|u1), not " + a.descr);
      images = std::move(a);
    } else {
      throw Error(path + ": an array of rank " + std::to_string(a.shape.size()) +
                  " is neither images [N, H, W(, C)] nor labels [N]");
    }
  }
  if (images.path.empty())
    throw Error("no images array [N, H, W] or [N, H, W, C] among the inputs");
  Source s;
  s.size = images.shape[0];
  s.height = images.shape[1];
  s.width = images.shape[2];
  s.channels = images.shape.size() == 4 ? images.shape[3] : 1;
  if (s.size == 0 || s.height == 0 || s.width == 0 || s.channels == 0)
    throw Error(images.path + ": the images array is empty");
  s.files.push_back(images.path);
  if (!labels.path.empty()) {
    if (labels.shape[0] != s.size)
      throw Error(labels.path + ": " + std::to_string(labels.shape[0]) + " labels for " +
                  std::to_string(s.size) + " images in " + images.path);
    s.labels = labels_of(labels);
    for (const int64_t l : s.labels)
      if (l < 0) throw Error(labels.path + ": negative label " + std::to_string(l));
    s.files.push_back(labels.path);
  }
  s.read = memory_reader(std::move(images.data), s.height, s.width, s.channels);
  s.describe = describe_in(s.files);
  return s;
}

}  // namespace difftrain::h5shard
