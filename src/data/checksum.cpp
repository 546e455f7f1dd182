#include "data/checksum.hpp"

#include <zlib.h>

#include <cstdio>

namespace difftrain::data {

void Crc32::update(const void* data, std::size_t bytes) {
  crc_ = static_cast<uint32_t>(crc32_z(crc_, static_cast<const Bytef*>(data), bytes));
}

std::string Crc32::str() const {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(crc_));
  return std::string("crc32:") + buf;
}

}  // namespace difftrain::data
