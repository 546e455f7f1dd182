// An input set for `h5shard convert`, whatever its format: a sample count, per-sample labels,
// and a reader of sample i as an HWC uint8 image. Each open_* names the offending file in the
// data::Error it throws.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace difftrain::h5shard {

struct Image {
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  std::vector<uint8_t> pixels;  // HWC
};

struct Source {
  int64_t size = 0;
  int64_t channels = 0;
  int64_t height = 0;  // 0 when samples differ in size (an image folder)
  int64_t width = 0;
  std::vector<int64_t> labels;  // empty: unlabeled
  int64_t num_classes = 0;      // 0: as many as class_names, else the largest label + 1
  std::vector<std::string> class_names;
  std::vector<std::string> files;      // what was read, for the manifest
  std::function<Image(int64_t)> read;  // sample i; may be called from several threads at once
  std::function<std::string(int64_t)> describe;  // where sample i comes from, for errors
};

// Which files of a directory input to take: the split's own files ("train" or "test"); "" = train.
// IDX: images (and optionally labels) IDX files, gzipped or not, or a directory with the
// train-/t10k- files of MNIST or Fashion-MNIST.
Source open_idx(const std::vector<std::string>& inputs, const std::string& split);
// CIFAR-10 / CIFAR-100 binary batches, or a directory of them. cifar100_labels: fine or coarse.
Source open_cifar(const std::vector<std::string>& inputs, const std::string& split,
                  const std::string& cifar100_labels);
// A uint8 .npy array [N, H, W] or [N, H, W, C], and optionally an integer labels .npy [N].
Source open_npy(const std::vector<std::string>& inputs);
// A folder tree of PNG / JPEG images; labels from the first-level sub-folder names unless
// no_labels. channels: 1 (grayscale) or 3 (RGB).
Source open_images(const std::string& root, const std::string& split, int64_t channels,
                   bool no_labels);

// Images held in memory, N x (H*W*C) bytes: the reader of the IDX, CIFAR and npy sources.
std::function<Image(int64_t)> memory_reader(std::vector<uint8_t> pixels, int64_t height,
                                            int64_t width, int64_t channels);
// "sample i of <files>".
std::function<std::string(int64_t)> describe_in(const std::vector<std::string>& files);

}  // namespace difftrain::h5shard
