#include "data/npz.hpp"

#include <zip.h>

#include <memory>

#include "data/error.hpp"

namespace difftrain::data {
namespace {

std::string shape_tuple(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
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
  int error = 0;
  zip_t* raw = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &error);
  if (!raw) {
    zip_error_t e;
    zip_error_init_with_code(&e, error);
    const std::string why = zip_error_strerror(&e);
    zip_error_fini(&e);
    throw Error(path + ": cannot create .npz: " + why);
  }
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

}  // namespace difftrain::data
