#include "test_files.hpp"

#include <hdf5.h>
#include <png.h>
// clang-format off
#include <cstdio>
#include <jpeglib.h>
// clang-format on
#include <zlib.h>

#include <sys/wait.h>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

namespace difftrain::testing {
namespace {

namespace fs = std::filesystem;

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("test helper: " + what);
}

}  // namespace

TempDir::TempDir() {
  std::string templ = (fs::temp_directory_path() / "difftrain-data-XXXXXX").string();
  check(mkdtemp(templ.data()) != nullptr, "mkdtemp");
  path_ = templ;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

RunResult run(const std::string& command) {
  RunResult r;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  check(p != nullptr, "popen " + command);
  std::array<char, 4096> buf;
  for (std::size_t n; (n = fread(buf.data(), 1, buf.size(), p)) > 0;)
    r.output.append(buf.data(), n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

RunResult h5shard(const std::string& args) {
  return run(std::string(H5SHARD_BINARY) + " " + args);
}

Idx read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  check(f != nullptr, "open " + path);
  unsigned char head[4];
  check(gzread(f, head, 4) == 4 && head[2] == 8, "IDX magic of " + path);
  Idx idx;
  int64_t total = 1;
  for (int d = 0; d < head[3]; ++d) {
    unsigned char b[4];
    check(gzread(f, b, 4) == 4, "IDX dims");
    idx.dims.push_back((int64_t{b[0]} << 24) | (b[1] << 16) | (b[2] << 8) | b[3]);
    total *= idx.dims.back();
  }
  idx.data.resize(static_cast<std::size_t>(total));
  check(gzread(f, idx.data.data(), static_cast<unsigned>(total)) == total, "IDX data");
  gzclose(f);
  return idx;
}

void write_png(const std::string& path, int height, int width, int channels,
               const std::vector<uint8_t>& hwc) {
  FILE* fp = std::fopen(path.c_str(), "wb");
  check(fp != nullptr, "open " + path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(fp);
    check(false, "libpng write " + path);
  }
  png_init_io(png, fp);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8,
               channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; ++y)
    png_write_row(
        png, const_cast<png_bytep>(hwc.data() + static_cast<std::size_t>(y) * width * channels));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  std::fclose(fp);
}

void write_jpeg(const std::string& path, int height, int width, int channels,
                const std::vector<uint8_t>& hwc) {
  FILE* fp = std::fopen(path.c_str(), "wb");
  check(fp != nullptr, "open " + path);
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, fp);
  cinfo.image_width = static_cast<JDIMENSION>(width);
  cinfo.image_height = static_cast<JDIMENSION>(height);
  cinfo.input_components = channels;
  cinfo.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 100, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(hwc.data() + static_cast<std::size_t>(cinfo.next_scanline) *
                                                         width * channels);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::fclose(fp);
}

void write_npy(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape,
               const void* data, std::size_t bytes) {
  std::string s = "(";
  for (const int64_t d : shape)
    s += std::to_string(d) + ", ";
  if (shape.size() > 1) s.resize(s.size() - 2);
  s += ")";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + s + ", }";
  // Magic, version, length: 10 bytes; pad the header with spaces so the data is 64-aligned.
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  out.write("\x93NUMPY\x01\x00", 8);
  const auto len = static_cast<uint16_t>(header.size());
  out.put(static_cast<char>(len & 0xff)).put(static_cast<char>(len >> 8));
  out << header;
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

std::string write_raw_shard(const std::string& path, const std::vector<int64_t>& shape,
                            const std::vector<uint8_t>& images, const std::vector<int64_t>& labels,
                            bool chunked) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const hid_t file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  check(file >= 0, "create " + path);
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (chunked && !dims.empty() && dims[0] > 0) {
    std::vector<hsize_t> chunk = dims;
    chunk[0] = 1;
    H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
  }
  const hid_t ds = H5Dcreate2(file, "images", H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  check(ds >= 0, "create images in " + path);
  if (!images.empty())
    check(H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, images.data()) >= 0,
          "write images");
  H5Dclose(ds);
  H5Pclose(dcpl);
  H5Sclose(space);
  if (!labels.empty()) {
    const hsize_t n = labels.size();
    const hid_t ls = H5Screate_simple(1, &n, nullptr);
    const hid_t ld =
        H5Dcreate2(file, "labels", H5T_STD_I64LE, ls, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    check(H5Dwrite(ld, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, labels.data()) >= 0,
          "write labels");
    H5Dclose(ld);
    H5Sclose(ls);
  }
  H5Fclose(file);
  uLong crc = crc32(0, images.data(), static_cast<uInt>(images.size()));
  crc = crc32(crc, reinterpret_cast<const Bytef*>(labels.data()),
              static_cast<uInt>(labels.size() * sizeof(int64_t)));
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08lx", crc);
  return std::string("crc32:") + buf;
}

std::vector<uint8_t> read_raw_uint8(const std::string& path, const std::string& dataset,
                                    std::vector<int64_t>* shape) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  check(file >= 0, "open " + path);
  const hid_t ds = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
  const hid_t space = H5Dget_space(ds);
  std::vector<hsize_t> dims(static_cast<std::size_t>(H5Sget_simple_extent_ndims(space)));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  hsize_t total = 1;
  for (const hsize_t d : dims)
    total *= d;
  std::vector<uint8_t> out(total);
  check(H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) >= 0, "read");
  if (shape) shape->assign(dims.begin(), dims.end());
  H5Sclose(space);
  H5Dclose(ds);
  H5Fclose(file);
  return out;
}

std::vector<int64_t> read_raw_int64(const std::string& path, const std::string& dataset) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  check(file >= 0, "open " + path);
  const hid_t ds = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
  const hid_t space = H5Dget_space(ds);
  std::vector<int64_t> out(static_cast<std::size_t>(H5Sget_simple_extent_npoints(space)));
  check(H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) >= 0, "read");
  H5Sclose(space);
  H5Dclose(ds);
  H5Fclose(file);
  return out;
}

void poke_row(const std::string& path, const std::string& dataset, int64_t row, uint8_t value) {
  const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  check(file >= 0, "open " + path);
  const hid_t ds = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
  const hid_t space = H5Dget_space(ds);
  std::vector<hsize_t> dims(static_cast<std::size_t>(H5Sget_simple_extent_ndims(space)));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = static_cast<hsize_t>(row);
  count[0] = 1;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  const hid_t mem = H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr);
  hsize_t n = 1;
  for (std::size_t i = 1; i < dims.size(); ++i)
    n *= dims[i];
  std::vector<uint8_t> values(n, value);
  check(H5Dwrite(ds, H5T_NATIVE_UINT8, mem, space, H5P_DEFAULT, values.data()) >= 0, "poke");
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(ds);
  H5Fclose(file);
}

uint8_t pixel_value(int64_t index, int64_t y, int64_t x, int64_t c) {
  return static_cast<uint8_t>((index * 37 + y * 11 + x * 5 + c * 101) % 256);
}

SyntheticSet write_synthetic_set(const std::string& dir, const std::vector<int64_t>& shard_sizes,
                                 int64_t height, int64_t width, int64_t channels, int64_t classes,
                                 const PixelFn& pixels) {
  fs::create_directories(dir);
  nlohmann::json shards = nlohmann::json::array();
  int64_t first = 0;
  for (std::size_t s = 0; s < shard_sizes.size(); ++s) {
    const int64_t n = shard_sizes[s];
    std::vector<uint8_t> images;
    std::vector<int64_t> labels;
    for (int64_t i = first; i < first + n; ++i) {
      for (int64_t y = 0; y < height; ++y)
        for (int64_t x = 0; x < width; ++x)
          for (int64_t c = 0; c < channels; ++c)
            images.push_back(pixels(i, y, x, c));
      if (classes) labels.push_back(i % classes);
    }
    const std::string file = "part" + std::to_string(s) + ".h5";
    const std::string crc =
        write_raw_shard(dir + "/" + file, {n, height, width, channels}, images, labels);
    shards.push_back({{"file", file},
                      {"num_samples", n},
                      {"bytes", fs::file_size(dir + "/" + file)},
                      {"checksum", crc}});
    first += n;
  }
  nlohmann::json m{{"format", "difftrain-shards"},
                   {"format_version", 1},
                   {"name", "synthetic"},
                   {"height", height},
                   {"width", width},
                   {"channels", channels},
                   {"labels", classes > 0},
                   {"shards", shards}};
  if (classes) m["num_classes"] = classes;
  write_text(dir + "/manifest.json", m.dump(2));
  return {dir + "/manifest.json", first, height, width, channels, classes};
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

}  // namespace difftrain::testing
