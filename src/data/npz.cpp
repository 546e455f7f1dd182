#include "data/npz.hpp"

#include <zip.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <regex>

#include "data/error.hpp"

namespace difftrain::data {
namespace {

std::string shape_tuple(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// zip_open, or data::Error "path: what: libzip's reason".
zip_t* open_zip(const std::string& path, int flags, const std::string& what) {
  int error = 0;
  zip_t* archive = zip_open(path.c_str(), flags, &error);
  if (archive) return archive;
  zip_error_t e;
  zip_error_init_with_code(&e, error);
  const std::string why = zip_error_strerror(&e);
  zip_error_fini(&e);
  throw Error(path + ": " + what + ": " + why);
}

// The value of `key` in the .npy header's dict literal, matched by value_pattern.
std::string header_field(const std::string& where, const std::string& header,
                         const std::string& key, const std::string& value_pattern) {
  const std::regex re("['\"]" + key + "['\"]\\s*:\\s*(" + value_pattern + ")");
  std::smatch m;
  if (!std::regex_search(header, m, re))
    throw Error(where + ": .npy header has no readable '" + key + "'");
  return m[1].str();
}

template <typename T, typename Out>
void widen(const std::vector<uint8_t>& raw, std::vector<Out>& out) {
  out.resize(raw.size() / sizeof(T));
  for (std::size_t i = 0; i < out.size(); ++i) {
    T v;
    std::memcpy(&v, raw.data() + i * sizeof(T), sizeof(T));
    out[i] = static_cast<Out>(v);
  }
}

}  // namespace

std::string npy_bytes(const NpyArray& a) {
  int64_t count = 1;
  for (const int64_t d : a.shape)
    count *= d;
  std::string header = "{'descr': '" + a.descr +
                       "', 'fortran_order': False, 'shape': " + shape_tuple(a.shape) + ", }";
  // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64 and
  // ended by a newline, as NumPy writes it.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>((header.size() >> 8) & 0xff);
  bytes += header;
  bytes.append(static_cast<const char*>(a.data), static_cast<std::size_t>(count * a.item_size));
  return bytes;
}

void write_npz(const std::string& path, const std::vector<NpyArray>& arrays) {
  zip_t* raw = open_zip(path, ZIP_CREATE | ZIP_TRUNCATE, "cannot create .npz");
  // libzip reads the buffers at zip_close, which writes a temporary file and renames it.
  std::vector<std::string> buffers;
  buffers.reserve(arrays.size());
  const auto fail = [&](const std::string& what) {
    const std::string why = zip_strerror(raw);
    zip_discard(raw);
    throw Error(path + ": " + what + ": " + why);
  };
  for (const NpyArray& a : arrays) {
    buffers.push_back(npy_bytes(a));
    zip_source_t* src = zip_source_buffer(raw, buffers.back().data(), buffers.back().size(), 0);
    if (!src) fail("cannot add " + a.name);
    const zip_int64_t index = zip_file_add(raw, (a.name + ".npy").c_str(), src, ZIP_FL_OVERWRITE);
    if (index < 0) {
      zip_source_free(src);
      fail("cannot add " + a.name);
    }
    if (zip_set_file_compression(raw, static_cast<zip_uint64_t>(index), ZIP_CM_STORE, 0) != 0)
      fail("cannot store " + a.name);
  }
  if (zip_close(raw) != 0) fail("cannot write .npz");
}

NpyData parse_npy(const std::string& bytes, const std::string& where, NpyKinds kinds) {
  // Magic "\x93NUMPY", version, a little-endian header length (2 bytes in version 1, 4 after),
  // a Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...)}, then the data.
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    throw Error(where + ": not a .npy file (bad magic)");
  const int major = static_cast<uint8_t>(bytes[6]);
  const auto byte = [&](std::size_t i) { return uint32_t{static_cast<uint8_t>(bytes[i])}; };
  std::size_t start = 0;
  uint32_t header_len = 0;
  if (major == 1) {
    start = 10;
    header_len = byte(8) | byte(9) << 8;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) throw Error(where + ": truncated .npy header");
    start = 12;
    header_len = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
  } else {
    throw Error(where + ": .npy version " + std::to_string(major) + " is not supported");
  }
  if (bytes.size() < start + header_len) throw Error(where + ": truncated .npy header");
  const std::string header = bytes.substr(start, header_len);

  NpyData a{where, "", header_field(where, header, "descr", "'[^']*'|\"[^\"]*\""), {}, {}};
  a.descr = a.descr.substr(1, a.descr.size() - 2);
  if (header_field(where, header, "fortran_order", "True|False") == "True")
    throw Error(where + ": Fortran-order arrays are not supported (save with C order)");
  const std::string shape = header_field(where, header, "shape", "\\([^)]*\\)");
  const std::regex number("\\d+");
  for (auto it = std::sregex_iterator(shape.begin(), shape.end(), number);
       it != std::sregex_iterator(); ++it)
    a.shape.push_back(std::stoll(it->str()));

  const char order = a.descr.empty() ? '?' : a.descr[0];
  const std::string kind =
      (order == '<' || order == '>' || order == '|' || order == '=') ? a.descr.substr(1) : a.descr;
  const bool integer = kind.size() == 2 && (kind[0] == 'u' || kind[0] == 'i') &&
                       std::string("1248").find(kind[1]) != std::string::npos;
  const bool floating = kind == "f4" || kind == "f8";
  if (!integer && !(floating && kinds == NpyKinds::numbers))
    throw Error(where + ": dtype '" + a.descr + "' is not an integer type" +
                (kinds == NpyKinds::numbers ? " or float32 / float64" : ""));
  if (order == '>' && kind[1] != '1')
    throw Error(where + ": big-endian arrays (" + a.descr + ") are not supported");
  a.descr = kind;
  int64_t count = 1;
  for (const int64_t d : a.shape)
    count *= d;
  const int64_t expected = count * (kind[1] - '0');
  const auto held = static_cast<int64_t>(bytes.size() - start - header_len);
  if (held != expected)
    throw Error(where + ": holds " + std::to_string(held) + " data bytes, the header's shape and " +
                "dtype need " + std::to_string(expected) + (held < expected ? " (truncated)" : ""));
  a.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(start + header_len), bytes.end());
  return a;
}

NpyData read_npy(const std::string& path, NpyKinds kinds) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": no such file");
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  return parse_npy(bytes, path, kinds);
}

std::vector<NpyData> read_npz(const std::string& path, NpyKinds kinds) {
  zip_t* raw = open_zip(path, ZIP_RDONLY, "cannot open as .npz");
  const std::unique_ptr<zip_t, int (*)(zip_t*)> archive(raw, zip_close);
  std::vector<NpyData> arrays;
  const zip_int64_t entries = zip_get_num_entries(raw, 0);
  for (zip_int64_t i = 0; i < entries; ++i) {
    zip_stat_t st;
    if (zip_stat_index(raw, static_cast<zip_uint64_t>(i), 0, &st) != 0) continue;
    const std::string entry = st.name;
    if (entry.size() < 4 || entry.compare(entry.size() - 4, 4, ".npy") != 0) continue;
    const std::string key = entry.substr(0, entry.size() - 4);
    std::string bytes(st.size, '\0');
    zip_file_t* f = zip_fopen_index(raw, static_cast<zip_uint64_t>(i), 0);
    const zip_int64_t got = f ? zip_fread(f, bytes.data(), st.size) : -1;
    if (f) zip_fclose(f);
    if (got != static_cast<zip_int64_t>(st.size))
      throw Error(path + ": cannot read " + key + ": " + zip_strerror(raw));
    arrays.push_back(parse_npy(bytes, path + ":" + key, kinds));
    arrays.back().name = key;
  }
  if (arrays.empty()) throw Error(path + ": an .npz with no .npy arrays");
  return arrays;
}

std::vector<int64_t> int64_values(const NpyData& a) {
  if (a.descr[0] == 'f') throw Error(a.where + ": holds floats (" + a.descr + "), not integers");
  std::vector<int64_t> out;
  const bool u = a.descr[0] == 'u';
  switch (a.descr[1]) {
    case '1':
      u ? widen<uint8_t>(a.data, out) : widen<int8_t>(a.data, out);
      break;
    case '2':
      u ? widen<uint16_t>(a.data, out) : widen<int16_t>(a.data, out);
      break;
    case '4':
      u ? widen<uint32_t>(a.data, out) : widen<int32_t>(a.data, out);
      break;
    default:
      u ? widen<uint64_t>(a.data, out) : widen<int64_t>(a.data, out);
  }
  return out;
}

std::vector<double> double_values(const NpyData& a) {
  std::vector<double> out;
  if (a.descr == "f4") {
    widen<float>(a.data, out);
  } else if (a.descr == "f8") {
    widen<double>(a.data, out);
  } else {
    throw Error(a.where + ": holds " + a.descr + ", not float32 or float64");
  }
  return out;
}

}  // namespace difftrain::data
