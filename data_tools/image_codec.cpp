#include "image_codec.hpp"

// clang-format off
#include <cstdio>  // jpeglib.h needs FILE first
#include <csetjmp>
#include <jpeglib.h>
#include <jerror.h>
// clang-format on
#include <png.h>

#include <fstream>
#include <iterator>

#include "data/error.hpp"

namespace difftrain::h5shard {
namespace {

using data::Error;

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

Image decode_png(const std::string& path, const std::vector<uint8_t>& bytes, int64_t channels) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&png, bytes.data(), bytes.size()))
    throw Error(path + ": bad PNG: " + png.message);
  // Read with alpha kept, then drop it: the colors stay as stored (no compositing).
  const bool alpha = (png.format & PNG_FORMAT_FLAG_ALPHA) != 0;
  png.format = channels == 1 ? (alpha ? PNG_FORMAT_GA : PNG_FORMAT_GRAY)
                             : (alpha ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB);
  const int64_t stored = channels + (alpha ? 1 : 0);
  std::vector<uint8_t> buf(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, buf.data(), 0, nullptr)) {
    const std::string msg = png.message;
    png_image_free(&png);
    throw Error(path + ": bad PNG: " + msg);
  }
  Image img{png.height, png.width, channels, {}};
  if (!alpha) {
    img.pixels = std::move(buf);
    return img;
  }
  img.pixels.resize(static_cast<std::size_t>(img.height * img.width * channels));
  for (int64_t p = 0; p < img.height * img.width; ++p)
    for (int64_t c = 0; c < channels; ++c)
      img.pixels[p * channels + c] = buf[p * stored + c];
  return img;
}

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  cinfo->err->format_message(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// Warnings (e.g. extraneous bytes) are tolerated, but a file that ends early is an error:
// libjpeg would fill the rest of the image with gray.
void jpeg_warning(j_common_ptr cinfo, int level) {
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) jpeg_error_exit(cinfo);
}

// libjpeg reports errors by longjmp: nothing with a destructor may live in this frame between
// setjmp and the jump, so the caller owns the buffers and turns a false return into an error.
bool decode_jpeg_raw(const std::vector<uint8_t>& bytes, int64_t channels, JpegError& err,
                     std::vector<uint8_t>& out, int64_t& height, int64_t& width) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.emit_message = jpeg_warning;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  height = cinfo.output_height;
  width = cinfo.output_width;
  const std::size_t stride = static_cast<std::size_t>(width * channels);
  out.resize(stride * static_cast<std::size_t>(height));  // may throw bad_alloc: no jump pending
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out.data() + stride * cinfo.output_scanline;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return true;
}

}  // namespace

Image decode_image(const std::string& path, int64_t channels) {
  const std::vector<uint8_t> bytes = read_file(path);
  if (bytes.size() >= 8 && png_sig_cmp(bytes.data(), 0, 8) == 0)
    return decode_png(path, bytes, channels);
  if (bytes.size() >= 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF) {
    JpegError err{};
    Image img{0, 0, channels, {}};
    if (!decode_jpeg_raw(bytes, channels, err, img.pixels, img.height, img.width))
      throw Error(path + ": bad JPEG: " + err.message);
    return img;
  }
  throw Error(path + ": not a PNG or JPEG image");
}

void write_png(const std::string& path, const Image& image) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = static_cast<png_uint_32>(image.width);
  png.height = static_cast<png_uint_32>(image.height);
  png.format = image.channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&png, path.c_str(), 0, image.pixels.data(), 0, nullptr))
    throw Error(path + ": cannot write PNG: " + png.message);
}

}  // namespace difftrain::h5shard
