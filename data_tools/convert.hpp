// `h5shard convert`: an input set in one of the supported formats to K HDF5 shards and a
// manifest, written so that an interrupted run leaves no shard or manifest that looks complete.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/h5.hpp"
#include "data/manifest.hpp"

namespace difftrain::h5shard {

struct ConvertOptions {
  std::string format;  // idx, cifar, images, npy
  std::vector<std::string> inputs;
  std::string out;  // directory
  std::optional<int64_t> shards;
  std::optional<int64_t> samples_per_shard;
  std::optional<int64_t> resize;  // S: center-crop and resample to S x S
  std::string name;               // default: the output directory's name
  std::string split;              // "", train or test
  std::optional<double> holdout;  // fraction held out for the test split
  uint64_t holdout_seed = 0;
  h5::Compression compression = h5::Compression::none;
  int64_t channels = 3;  // images: 1 or 3
  bool no_labels = false;
  std::vector<std::string> class_names;  // overrides what the input says
  std::string cifar_labels = "fine";     // CIFAR-100: fine or coarse
  int threads = 0;                       // decoders; 0: one per core
  bool progress = true;
  std::string command;  // the command line, recorded in the manifest
};

// Converts and returns the manifest written to out/manifest.json. Throws data::Error.
data::Manifest convert(const ConvertOptions& options);

// The samples of a set of n kept for a split: with a holdout fraction f, a seeded random
// round(f*n) of them form "test" and the rest "train"; ascending. Without holdout: all.
std::vector<int64_t> split_indices(int64_t n, const std::string& split,
                                   std::optional<double> holdout, uint64_t seed);

}  // namespace difftrain::h5shard
