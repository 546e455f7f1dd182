#include "data/h5.hpp"

#include <filesystem>
#include <numeric>

namespace difftrain::h5 {
namespace {

// HDF5 prints its own error stack to stderr by default; our errors say what went wrong instead.
void silence_hdf5_errors() {
  static const bool once = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)once;
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
hid_t native_type<uint8_t>() { return H5T_NATIVE_UINT8; }
template <>
hid_t native_type<int64_t>() { return H5T_NATIVE_INT64; }
template <>
hid_t native_type<float>() { return H5T_NATIVE_FLOAT; }
template <>
hid_t native_type<double>() { return H5T_NATIVE_DOUBLE; }

File File::open(const std::string& path, bool writable) {
  silence_hdf5_errors();
  if (!std::filesystem::exists(path)) throw Error(path + ": no such file");
  if (H5Fis_hdf5(path.c_str()) <= 0) throw Error(path + ": not an HDF5 file (or truncated)");
  hid_t id = H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id < 0) throw Error(path + ": cannot open HDF5 file");
  return File(path, Handle(id, H5Fclose));
}

File File::create(const std::string& path) {
  silence_hdf5_errors();
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (id < 0) throw Error(path + ": cannot create HDF5 file");
  return File(path, Handle(id, H5Fclose));
}

void File::fail(const std::string& what) const { throw Error(path_ + ": " + what); }

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
  if (n > 0 &&
      H5Dread(ds.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    fail("cannot read dataset '" + dataset + "' (truncated or corrupt file?)");
  return out;
}

template <typename T>
void File::write(const std::string& dataset, const std::vector<int64_t>& shape, const T* data,
                 const std::vector<int64_t>& chunk) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  if (!chunk.empty()) {
    std::vector<hsize_t> c(chunk.begin(), chunk.end());
    H5Pset_chunk(dcpl.get(), static_cast<int>(c.size()), c.data());
  }
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  Handle ds(H5Dcreate2(id(), dataset.c_str(), native_type<T>(), space.get(), lcpl.get(),
                       dcpl.get(), H5P_DEFAULT),
            H5Dclose);
  if (ds.get() < 0) fail("cannot create dataset '" + dataset + "'");
  if (H5Dwrite(ds.get(), native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    fail("cannot write dataset '" + dataset + "'");
}

template std::vector<uint8_t> File::read<uint8_t>(const std::string&) const;
template std::vector<int64_t> File::read<int64_t>(const std::string&) const;
template std::vector<float> File::read<float>(const std::string&) const;
template std::vector<double> File::read<double>(const std::string&) const;
template void File::write<uint8_t>(const std::string&, const std::vector<int64_t>&,
                                   const uint8_t*, const std::vector<int64_t>&);
template void File::write<int64_t>(const std::string&, const std::vector<int64_t>&,
                                   const int64_t*, const std::vector<int64_t>&);
template void File::write<float>(const std::string&, const std::vector<int64_t>&, const float*,
                                 const std::vector<int64_t>&);
template void File::write<double>(const std::string&, const std::vector<int64_t>&,
                                  const double*, const std::vector<int64_t>&);

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

}  // namespace difftrain::h5
