// The layout inside one shard file (docs/data.md, Layout): standard HDF5 that h5py reads as is.
//   /images  uint8 [n, H, W, C], chunked one sample per chunk, optionally gzip or lzf
//   /labels  int64 [n], only in labeled sets
//   root attributes (informative): format, format_version, height, width, channels,
//   num_samples, first_index (of the shard's first sample in the whole set), source
#pragma once

namespace difftrain::data::shard {

inline constexpr const char* kImages = "images";
inline constexpr const char* kLabels = "labels";
inline constexpr const char* kFormat = "difftrain-shard";
inline constexpr int kFormatVersion = 1;

}  // namespace difftrain::data::shard
