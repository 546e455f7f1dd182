// NumPy .npy and .npz files. Written: .npz as numpy.savez does, a zip archive (libzip) of .npy
// arrays stored uncompressed, so np.load(path)["arr_0"] reads them as they are. Read: integer
// arrays from a .npy, or from every entry of an .npz (numpy.savez or savez_compressed), as
// guided-diffusion's image_sample.py writes its samples (arr_0 images, arr_1 labels). No torch:
// h5shard reads them too.
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

// Which dtypes a reader takes: integers (images, labels), or floats too (statistics).
enum class NpyKinds { integers, numbers };

// An array read from a .npy file or an .npz entry.
struct NpyData {
  std::string where;  // the file, or "file.npz:arr_0", as errors name it
  std::string name;   // the .npz key ("arr_0"); empty for a .npy file
  std::string descr;  // kind and bytes, the byte order dropped: "u1", "i8", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // C order, little-endian
};

// The array of .npy bytes (format 1, 2 or 3; C order; an integer dtype, or with NpyKinds::numbers
// also float32 / float64; little-endian or of one byte). Throws data::Error naming `where`: a bad
// magic or header, another dtype, Fortran order, data shorter or longer than the shape says.
NpyData parse_npy(const std::string& bytes, const std::string& where,
                  NpyKinds kinds = NpyKinds::integers);
NpyData read_npy(const std::string& path, NpyKinds kinds = NpyKinds::integers);
// Every .npy entry of an .npz, in archive order, named by its key.
std::vector<NpyData> read_npz(const std::string& path, NpyKinds kinds = NpyKinds::integers);

// The values of an integer array, widened to int64.
std::vector<int64_t> int64_values(const NpyData& array);
// The values of a float32 or float64 array, as double.
std::vector<double> double_values(const NpyData& array);

}  // namespace difftrain::data
