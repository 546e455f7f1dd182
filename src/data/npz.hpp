// NumPy .npz files (numpy.savez): a zip archive (libzip) of .npy arrays, stored uncompressed, so
// np.load(path)["arr_0"] reads them as they are.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace difftrain::data {

struct NpyArray {
  std::string name;            // the key in np.load(...): "arr_0", ...
  std::string descr;           // NumPy dtype string: "|u1" (uint8), "<i8" (int64), "<f4", ...
  const void* data = nullptr;  // C order, little-endian
  int64_t item_size = 0;       // bytes per element
  std::vector<int64_t> shape;
};

// The .npy (format 1.0) bytes of one array: header and data.
std::string npy_bytes(const NpyArray& array);

// Writes the arrays as name.npy entries of a zip at path (replaced if it exists). Throws
// data::Error naming the file.
void write_npz(const std::string& path, const std::vector<NpyArray>& arrays);

}  // namespace difftrain::data
