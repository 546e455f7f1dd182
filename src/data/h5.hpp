// Small RAII wrappers over the HDF5 C API: open/create files, read and write whole datasets and
// scalar attributes. Every failure throws h5::Error with the file and object named.
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
  void reset();

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

template <typename T>
hid_t native_type();  // H5T_NATIVE_* for uint8_t, int64_t, float, double

class File {
 public:
  static File open(const std::string& path, bool writable = false);
  // Creates (truncates) a file.
  static File create(const std::string& path);

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

  bool has_attr(const std::string& name, const std::string& object = "/") const;
  // Fixed- or variable-length string attributes; trailing NULs are stripped.
  std::string attr_string(const std::string& name, const std::string& object = "/") const;
  int64_t attr_int(const std::string& name, const std::string& object = "/") const;
  void set_attr(const std::string& name, const std::string& value, const std::string& object = "/");
  void set_attr(const std::string& name, int64_t value, const std::string& object = "/");

  [[noreturn]] void fail(const std::string& what) const;

 private:
  File(std::string path, Handle file) : path_(std::move(path)), file_(std::move(file)) {}
  Handle open_dataset(const std::string& name) const;
  Handle open_attr(const std::string& name, const std::string& object) const;
  std::string path_;
  Handle file_;
};

}  // namespace difftrain::h5
