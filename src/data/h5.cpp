#include "data/h5.hpp"

#include <dlfcn.h>

#include <filesystem>
#include <mutex>
#include <numeric>

namespace difftrain::h5 {
namespace {

constexpr H5Z_filter_t kLzfFilter = 32000;  // registered by h5py

// HDF5 prints its own error stack to stderr by default; our errors say what went wrong instead.
// The thread-safe library keeps one error stack per thread, so each thread silences its own.
void silence_hdf5_errors() {
  thread_local const bool once = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)once;
}

// HDF5 loads filter plugins when reading, but not when writing: a filter must be registered to
// compress. Finds the plugin in HDF5's plugin search path (HDF5_PLUGIN_PATH, else the built-in
// directory) and registers it, as HDF5's own loader would.
bool load_filter_plugin(H5Z_filter_t id) {
  using TypeFn = H5PL_type_t (*)();
  using InfoFn = const void* (*)();
  // Debian's lzf plugin (hdf5-plugin-lzf) uses liblzf without linking it: provide it first.
  if (id == kLzfFilter) dlopen("liblzf.so.1", RTLD_NOW | RTLD_GLOBAL);
  unsigned num_paths = 0;
  if (H5PLsize(&num_paths) < 0) return false;
  for (unsigned i = 0; i < num_paths; ++i) {
    const ssize_t len = H5PLget(i, nullptr, 0);
    if (len <= 0) continue;
    std::string dir(static_cast<std::size_t>(len) + 1, '\0');
    H5PLget(i, dir.data(), dir.size());
    dir.resize(static_cast<std::size_t>(len));
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (entry.path().extension() != ".so") continue;
      void* lib = dlopen(entry.path().c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!lib) continue;
      const auto type = reinterpret_cast<TypeFn>(dlsym(lib, "H5PLget_plugin_type"));
      const auto info = reinterpret_cast<InfoFn>(dlsym(lib, "H5PLget_plugin_info"));
      if (type && info && type() == H5PL_TYPE_FILTER) {
        const auto* filter = static_cast<const H5Z_class2_t*>(info());
        if (filter && filter->id == id && H5Zregister(filter) >= 0) return true;  // stays loaded
      }
      dlclose(lib);
    }
  }
  return false;
}

bool filter_registered_or_loaded(H5Z_filter_t id) {
  static std::mutex mutex;
  const std::lock_guard lock(mutex);
  return H5Zfilter_avail(id) > 0 || load_filter_plugin(id);
}

}  // namespace

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    close_ = o.close_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void Handle::reset() {
  if (id_ >= 0 && close_) close_(id_);
  id_ = H5I_INVALID_HID;
}

template <>
hid_t native_type<uint8_t>() {
  return H5T_NATIVE_UINT8;
}
template <>
hid_t native_type<int64_t>() {
  return H5T_NATIVE_INT64;
}
template <>
hid_t native_type<float>() {
  return H5T_NATIVE_FLOAT;
}
template <>
hid_t native_type<double>() {
  return H5T_NATIVE_DOUBLE;
}

std::string to_string(Compression c) {
  switch (c) {
    case Compression::gzip:
      return "gzip";
    case Compression::lzf:
      return "lzf";
    case Compression::none:
      break;
  }
  return "none";
}

Compression parse_compression(const std::string& name) {
  if (name == "none") return Compression::none;
  if (name == "gzip") return Compression::gzip;
  if (name == "lzf") return Compression::lzf;
  throw Error("unknown compression '" + name + "' (none, gzip or lzf)");
}

bool filter_available(Compression c) {
  silence_hdf5_errors();
  switch (c) {
    case Compression::gzip:
      return H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0;
    case Compression::lzf:
      return filter_registered_or_loaded(kLzfFilter);
    case Compression::none:
      break;
  }
  return true;
}

File File::open(const std::string& path, bool writable) {
  silence_hdf5_errors();
  if (!std::filesystem::exists(path)) throw Error(path + ": no such file");
  if (H5Fis_hdf5(path.c_str()) <= 0) throw Error(path + ": not an HDF5 file (or truncated)");
  hid_t id = H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) throw Error(path + ": cannot open HDF5 file");
  return File(path, Handle(id, H5Fclose));
}

File File::create(const std::string& path, FileFormat format) {
  silence_hdf5_errors();
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  if (format == FileFormat::v110)
    H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110);
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
  if (id < 0) throw Error(path + ": cannot create HDF5 file");
  return File(path, Handle(id, H5Fclose));
}

void File::fail(const std::string& what) const {
  throw Error(path_ + ": " + what);
}

bool File::has(const std::string& name) const {
  // H5Lexists must be asked about every intermediate group of the path.
  std::string prefix;
  for (std::size_t pos = 0; pos != std::string::npos;) {
    const std::size_t next = name.find('/', pos + 1);
    prefix = name.substr(0, next);
    if (!prefix.empty() && prefix != "/" && H5Lexists(id(), prefix.c_str(), H5P_DEFAULT) <= 0)
      return false;
    pos = next;
  }
  return !name.empty();
}

Handle File::open_dataset(const std::string& name) const {
  if (!has(name)) fail("missing dataset '" + name + "'");
  hid_t ds = H5Dopen2(id(), name.c_str(), H5P_DEFAULT);
  if (ds < 0) fail("'" + name + "' is not a dataset");
  return Handle(ds, H5Dclose);
}

std::vector<int64_t> File::shape(const std::string& dataset) const {
  Handle ds = open_dataset(dataset);
  Handle space(H5Dget_space(ds.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail("cannot read the shape of '" + dataset + "'");
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return {dims.begin(), dims.end()};
}

std::string File::dtype(const std::string& dataset) const {
  Handle ds = open_dataset(dataset);
  Handle type(H5Dget_type(ds.get()), H5Tclose);
  const std::string bits = std::to_string(8 * H5Tget_size(type.get()));
  switch (H5Tget_class(type.get())) {
    case H5T_FLOAT:
      return "float" + bits;
    case H5T_INTEGER:
      return (H5Tget_sign(type.get()) == H5T_SGN_NONE ? "uint" : "int") + bits;
    case H5T_STRING:
      return "string";
    default:
      return "other";
  }
}

template <typename T>
std::vector<T> File::read(const std::string& dataset) const {
  Handle ds = open_dataset(dataset);
  const auto dims = shape(dataset);
  const int64_t n = std::accumulate(dims.begin(), dims.end(), int64_t{1}, std::multiplies<>());
  Handle type(H5Dget_type(ds.get()), H5Tclose);
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_FLOAT && cls != H5T_INTEGER) fail("dataset '" + dataset + "' is not numeric");
  std::vector<T> out(static_cast<std::size_t>(n));
  if (n > 0 && H5Dread(ds.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    fail("cannot read dataset '" + dataset + "' (truncated or corrupt file?)");
  return out;
}

template <typename T>
void File::create_dataset(const std::string& dataset, const std::vector<int64_t>& shape,
                          const DatasetOptions& options) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (!options.chunk.empty()) {
    std::vector<hsize_t> c(options.chunk.begin(), options.chunk.end());
    if (H5Pset_chunk(dcpl.get(), static_cast<int>(c.size()), c.data()) < 0)
      fail("invalid chunk shape for dataset '" + dataset + "'");
  }
  if (options.compression != Compression::none) {
    if (options.chunk.empty()) fail("compressed dataset '" + dataset + "' needs chunks");
    if (!filter_available(options.compression))
      fail("the " + to_string(options.compression) +
           " filter is not available (lzf: install the hdf5-plugin-lzf package)");
    const herr_t ok = options.compression == Compression::gzip
                          ? H5Pset_deflate(dcpl.get(), static_cast<unsigned>(options.gzip_level))
                          : H5Pset_filter(dcpl.get(), kLzfFilter, H5Z_FLAG_OPTIONAL, 0, nullptr);
    if (ok < 0) fail("cannot set compression of dataset '" + dataset + "'");
  }
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  Handle ds(H5Dcreate2(id(), dataset.c_str(), native_type<T>(), space.get(), lcpl.get(), dcpl.get(),
                       H5P_DEFAULT),
            H5Dclose);
  if (ds.get() < 0) fail("cannot create dataset '" + dataset + "'");
}

template <typename T>
void File::write(const std::string& dataset, const std::vector<int64_t>& shape, const T* data,
                 const std::vector<int64_t>& chunk) {
  create_dataset<T>(dataset, shape, DatasetOptions{.chunk = chunk});
  Handle ds = open_dataset(dataset);
  if (H5Dwrite(ds.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    fail("cannot write dataset '" + dataset + "'");
}

Rows File::rows(const std::string& dataset) const {
  return Rows(*this, dataset);
}

std::string File::compression(const std::string& dataset) const {
  Handle ds = open_dataset(dataset);
  Handle dcpl(H5Dget_create_plist(ds.get()), H5Pclose);
  const int n = H5Pget_nfilters(dcpl.get());
  std::string result = "none";
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0;
    std::size_t nvalues = 0;
    const H5Z_filter_t f = H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &nvalues,
                                          nullptr, 0, nullptr, nullptr);
    if (f == H5Z_FILTER_DEFLATE) {
      result = "gzip";
    } else if (f == kLzfFilter) {
      result = "lzf";
    } else if (f != H5Z_FILTER_SHUFFLE && f != H5Z_FILTER_FLETCHER32) {
      return "other";
    }
  }
  return result;
}

void File::close() {
  const hid_t id = file_.release();
  if (id >= 0 && H5Fclose(id) < 0) fail("cannot close the file (write failed or disk full?)");
}

template std::vector<uint8_t> File::read<uint8_t>(const std::string&) const;
template std::vector<int64_t> File::read<int64_t>(const std::string&) const;
template std::vector<float> File::read<float>(const std::string&) const;
template std::vector<double> File::read<double>(const std::string&) const;
template void File::create_dataset<uint8_t>(const std::string&, const std::vector<int64_t>&,
                                            const DatasetOptions&);
template void File::create_dataset<int64_t>(const std::string&, const std::vector<int64_t>&,
                                            const DatasetOptions&);
template void File::create_dataset<float>(const std::string&, const std::vector<int64_t>&,
                                          const DatasetOptions&);
template void File::create_dataset<double>(const std::string&, const std::vector<int64_t>&,
                                           const DatasetOptions&);
template void File::write<uint8_t>(const std::string&, const std::vector<int64_t>&, const uint8_t*,
                                   const std::vector<int64_t>&);
template void File::write<int64_t>(const std::string&, const std::vector<int64_t>&, const int64_t*,
                                   const std::vector<int64_t>&);
template void File::write<float>(const std::string&, const std::vector<int64_t>&, const float*,
                                 const std::vector<int64_t>&);
template void File::write<double>(const std::string&, const std::vector<int64_t>&, const double*,
                                  const std::vector<int64_t>&);

bool File::has_attr(const std::string& name, const std::string& object) const {
  return H5Aexists_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT) > 0;
}

Handle File::open_attr(const std::string& name, const std::string& object) const {
  if (!has_attr(name, object)) fail("missing attribute '" + name + "' on '" + object + "'");
  hid_t a = H5Aopen_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0) fail("cannot open attribute '" + name + "'");
  return Handle(a, H5Aclose);
}

std::string File::attr_string(const std::string& name, const std::string& object) const {
  Handle attr = open_attr(name, object);
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING) fail("attribute '" + name + "' is not a string");
  std::string value;
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem.get(), H5T_VARIABLE);
    char* buf = nullptr;
    if (H5Aread(attr.get(), mem.get(), &buf) < 0) fail("cannot read attribute '" + name + "'");
    value = buf ? buf : "";
    H5free_memory(buf);
  } else {
    const std::size_t size = H5Tget_size(type.get());
    std::vector<char> buf(size + 1, '\0');
    if (H5Aread(attr.get(), type.get(), buf.data()) < 0)
      fail("cannot read attribute '" + name + "'");
    value.assign(buf.data(), size);
  }
  value.erase(value.find_last_not_of('\0') + 1);
  return value;
}

int64_t File::attr_int(const std::string& name, const std::string& object) const {
  Handle attr = open_attr(name, object);
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER) fail("attribute '" + name + "' is not an integer");
  int64_t v = 0;
  if (H5Aread(attr.get(), H5T_NATIVE_INT64, &v) < 0) fail("cannot read attribute '" + name + "'");
  return v;
}

void File::set_attr(const std::string& name, const std::string& value, const std::string& object) {
  if (has_attr(name, object)) H5Adelete_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT);
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<std::size_t>(value.size(), 1));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate_by_name(id(), object.c_str(), name.c_str(), type.get(), space.get(),
                                H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  if (attr.get() < 0 || H5Awrite(attr.get(), type.get(), value.c_str()) < 0)
    fail("cannot write attribute '" + name + "'");
}

void File::set_attr(const std::string& name, int64_t value, const std::string& object) {
  if (has_attr(name, object)) H5Adelete_by_name(id(), object.c_str(), name.c_str(), H5P_DEFAULT);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate_by_name(id(), object.c_str(), name.c_str(), H5T_STD_I64LE, space.get(),
                                H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  if (attr.get() < 0 || H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) < 0)
    fail("cannot write attribute '" + name + "'");
}

Rows::Rows(const File& file, const std::string& dataset)
    : file_(&file), name_(dataset), dataset_(file.open_dataset(dataset)) {
  silence_hdf5_errors();
  shape_ = file.shape(dataset);
  if (shape_.empty()) file.fail("dataset '" + dataset + "' is a scalar, not rows");
  for (std::size_t i = 1; i < shape_.size(); ++i)
    row_elements_ *= shape_[i];
  file_space_ = Handle(H5Dget_space(dataset_.get()), H5Sclose);
  if (file_space_.get() < 0) file.fail("cannot read the shape of '" + dataset + "'");
  stored_type_ = Handle(H5Dget_type(dataset_.get()), H5Tclose);
  Handle dcpl(H5Dget_create_plist(dataset_.get()), H5Pclose);
  if (H5Pget_layout(dcpl.get()) == H5D_CHUNKED && H5Pget_nfilters(dcpl.get()) == 0) {
    std::vector<hsize_t> chunk(shape_.size());
    const int rank = H5Pget_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
    row_chunks_ = rank == static_cast<int>(shape_.size()) && chunk[0] == 1;
    for (std::size_t i = 1; row_chunks_ && i < chunk.size(); ++i)
      row_chunks_ = chunk[i] == static_cast<hsize_t>(shape_[i]);
  }
}

Handle Rows::memory_space(int64_t count) const {
  // The same rank as the file's space: HDF5 then copies rows whole instead of element-wise
  // (ten times faster for one small row).
  std::vector<hsize_t> dims(shape_.begin(), shape_.end());
  dims[0] = static_cast<hsize_t>(count);
  return Handle(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
}

void Rows::check_range(int64_t first, int64_t count) const {
  if (first < 0 || count < 0 || first + count > size())
    file_->fail("rows [" + std::to_string(first) + ", " + std::to_string(first + count) +
                ") outside dataset '" + name_ + "' of " + std::to_string(size()) + " rows");
}

void Rows::select(int64_t first, int64_t count) const {
  std::vector<hsize_t> start(shape_.size(), 0);
  std::vector<hsize_t> counts(shape_.begin(), shape_.end());
  start[0] = static_cast<hsize_t>(first);
  counts[0] = static_cast<hsize_t>(count);
  if (H5Sselect_hyperslab(file_space_.get(), H5S_SELECT_SET, start.data(), nullptr, counts.data(),
                          nullptr) < 0)
    file_->fail("cannot select rows of '" + name_ + "'");
}

template <typename T>
void Rows::read(int64_t first, int64_t count, T* out) const {
  silence_hdf5_errors();
  check_range(first, count);
  if (count == 0) return;
  if (row_chunks_ && H5Tequal(stored_type_.get(), native_type<T>()) > 0) {
    // Raw chunk reads skip HDF5's selection machinery: for one-row chunks they are 2x (one row)
    // to 3x (many rows) faster. A chunk never written (fill values) has no storage: it and the
    // rest fall through to H5Dread.
    std::vector<hsize_t> offset(shape_.size(), 0);
    for (; count > 0; ++first, --count, out += row_elements_) {
      offset[0] = static_cast<hsize_t>(first);
      uint32_t filters = 0;
      if (H5Dread_chunk(dataset_.get(), H5P_DEFAULT, offset.data(), &filters, out) < 0) break;
    }
    if (count == 0) return;
  }
  select(first, count);
  Handle mem = memory_space(count);
  if (H5Dread(dataset_.get(), native_type<T>(), mem.get(), file_space_.get(), H5P_DEFAULT, out) < 0)
    file_->fail("cannot read rows [" + std::to_string(first) + ", " +
                std::to_string(first + count) + ") of '" + name_ +
                "' (truncated or corrupt file?)");
}

template <typename T>
void Rows::write(int64_t first, int64_t count, const T* data) {
  silence_hdf5_errors();
  check_range(first, count);
  if (count == 0) return;
  if (row_chunks_ && H5Tequal(stored_type_.get(), native_type<T>()) > 0) {
    std::vector<hsize_t> offset(shape_.size(), 0);
    const auto bytes = static_cast<std::size_t>(row_elements_) * sizeof(T);
    for (int64_t i = 0; i < count; ++i) {
      offset[0] = static_cast<hsize_t>(first + i);
      if (H5Dwrite_chunk(dataset_.get(), H5P_DEFAULT, 0, offset.data(), bytes,
                         data + i * row_elements_) < 0)
        file_->fail("cannot write row " + std::to_string(first + i) + " of '" + name_ + "'");
    }
    return;
  }
  select(first, count);
  Handle mem = memory_space(count);
  if (H5Dwrite(dataset_.get(), native_type<T>(), mem.get(), file_space_.get(), H5P_DEFAULT, data) <
      0)
    file_->fail("cannot write rows of '" + name_ + "'");
}

template void Rows::read<uint8_t>(int64_t, int64_t, uint8_t*) const;
template void Rows::read<int64_t>(int64_t, int64_t, int64_t*) const;
template void Rows::read<float>(int64_t, int64_t, float*) const;
template void Rows::read<double>(int64_t, int64_t, double*) const;
template void Rows::write<uint8_t>(int64_t, int64_t, const uint8_t*);
template void Rows::write<int64_t>(int64_t, int64_t, const int64_t*);
template void Rows::write<float>(int64_t, int64_t, const float*);
template void Rows::write<double>(int64_t, int64_t, const double*);

}  // namespace difftrain::h5
