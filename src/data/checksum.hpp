// The shard checksum: zlib's CRC-32 of the stored bytes, written "crc32:0123abcd". It guards
// against corruption and truncation, not against tampering.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace difftrain::data {

class Crc32 {
 public:
  void update(const void* data, std::size_t bytes);
  uint32_t value() const { return crc_; }
  std::string str() const;  // "crc32:%08x"

 private:
  uint32_t crc_ = 0;
};

}  // namespace difftrain::data
