// Small RAII wrappers over the HDF5 C API: open/create files, read and write whole datasets, slices
// of rows, and scalar attributes. Every failure throws h5::Error with the file and object named.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace difftrain::h5 {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Owns one hid_t and closes it with the matching H5*close.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer close) : id_(id), close_(close) {}
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }
  hid_t get() const { return id_; }
  // Gives up ownership without closing.
  hid_t release() {
    const hid_t id = id_;
    id_ = H5I_INVALID_HID;
    return id;
  }
  void reset();

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

template <typename T>
hid_t native_type();  // H5T_NATIVE_* for uint8_t, int64_t, float, double

// lzf is h5py's filter (id 32000); the C library reads and writes it through a plugin
// (Debian: hdf5-plugin-lzf), so files stay readable by h5py as they are.
enum class Compression { none, gzip, lzf };
std::string to_string(Compression c);
Compression parse_compression(const std::string& name);  // throws h5::Error on an unknown name
bool filter_available(Compression c);

struct DatasetOptions {
  std::vector<int64_t> chunk;  // empty: contiguous layout (compression needs chunks)
  Compression compression = Compression::none;
  int gzip_level = 4;
};

// compatible: the oldest file format that holds the data (readable by HDF5 1.8). v110: HDF5
// 1.10's, whose chunk index for fixed-size datasets (a fixed array, not a B-tree) makes random
// reads of one-sample chunks about 1.5x faster; any HDF5 >= 1.10 (every current h5py) reads it.
enum class FileFormat { compatible, v110 };

class Rows;

class File {
 public:
  static File open(const std::string& path, bool writable = false);
  // Creates (truncates) a file.
  static File create(const std::string& path, FileFormat format = FileFormat::compatible);

  const std::string& path() const { return path_; }
  hid_t id() const { return file_.get(); }

  bool has(const std::string& name) const;  // dataset or group at this path
  std::vector<int64_t> shape(const std::string& dataset) const;
  // The dataset's stored type class and element size, e.g. "float64", "int64", "uint8".
  std::string dtype(const std::string& dataset) const;

  // Reads a whole dataset, converting to T (HDF5 converts between numeric types).
  template <typename T>
  std::vector<T> read(const std::string& dataset) const;
  // Writes a whole dataset. chunk: empty = contiguous layout.
  template <typename T>
  void write(const std::string& dataset, const std::vector<int64_t>& shape, const T* data,
             const std::vector<int64_t>& chunk = {});
  // Creates a dataset of element type T to be filled later through rows().
  template <typename T>
  void create_dataset(const std::string& dataset, const std::vector<int64_t>& shape,
                      const DatasetOptions& options = {});
  // The dataset opened for reading and writing slices along its first dimension.
  Rows rows(const std::string& dataset) const;
  // The compression filter of a dataset: none, gzip, lzf, or other (any other filter).
  std::string compression(const std::string& dataset) const;
  // Closes the file now, reporting errors (a write may only fail at close); the destructor
  // would swallow them.
  void close();

  bool has_attr(const std::string& name, const std::string& object = "/") const;
  // Fixed- or variable-length string attributes; trailing NULs are stripped.
  std::string attr_string(const std::string& name, const std::string& object = "/") const;
  int64_t attr_int(const std::string& name, const std::string& object = "/") const;
  void set_attr(const std::string& name, const std::string& value, const std::string& object = "/");
  void set_attr(const std::string& name, int64_t value, const std::string& object = "/");

  [[noreturn]] void fail(const std::string& what) const;

 private:
  File(std::string path, Handle file) : path_(std::move(path)), file_(std::move(file)) {}
  friend class Rows;
  Handle open_dataset(const std::string& name) const;
  Handle open_attr(const std::string& name, const std::string& object) const;
  std::string path_;
  Handle file_;
};

// A dataset read or written in slices of whole rows (first-dimension indices), e.g. one sample
// of an [n, H, W, C] image array. Keeps the dataset open, so per-sample reads are cheap. Refers to
// its File, which must outlive it.
class Rows {
 public:
  Rows(const File& file, const std::string& dataset);
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t size() const { return shape_.empty() ? 0 : shape_[0]; }
  int64_t row_elements() const { return row_elements_; }

  // Rows [first, first + count) into out (count * row_elements() values, converted to T). One
  // row of an unfiltered dataset chunked by rows, stored as T, is read as its raw chunk.
  template <typename T>
  void read(int64_t first, int64_t count, T* out) const;
  template <typename T>
  void write(int64_t first, int64_t count, const T* data);

 private:
  void check_range(int64_t first, int64_t count) const;
  void select(int64_t first, int64_t count) const;
  Handle memory_space(int64_t count) const;
  const File* file_;
  std::string name_;
  Handle dataset_;
  Handle file_space_;
  Handle stored_type_;
  std::vector<int64_t> shape_;
  int64_t row_elements_ = 1;
  bool row_chunks_ = false;  // unfiltered, one row per chunk: direct chunk reads apply
};

}  // namespace difftrain::h5
