// The training data loader: every rank opens the same manifest and reads its rows of each global
// batch in one background I/O thread, into a bounded queue of ready batches.
//
// Order: epoch e's global permutation is drawn from (seed, e); global batch k is
// perm[k*B, (k+1)*B) and rank r of W takes rows [r*B/W, (r+1)*B/W) of it. One rank with batch B
// and W ranks with B/W each therefore see the same samples at every step, and a Cursor saved in a
// checkpoint resumes the same sequence with any number of ranks (same seed and B).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "data/error.hpp"
#include "data/manifest.hpp"
#include "data/sample_order.hpp"

namespace difftrain::data {

struct LoaderOptions {
  std::string manifest;      // manifest.json, or the directory holding it
  int64_t global_batch = 0;  // B: the batch over all ranks
  int rank = 0;
  int world = 1;
  uint64_t seed = 0;
  LastBatch last_batch = LastBatch::drop;
  bool random_flip = false;  // horizontal, decided per (seed, epoch, sample index)
  bool labels = false;       // return labels (the manifest must have them)
  int prefetch = 4;          // batches read ahead of the consumer
  // Pad H and W up to this size with -1 (black), the image centered: 28 -> 32 for the UNet.
  std::optional<int64_t> pad_to;
  // Recompute the shard checksums at start; each rank checks every world-th shard, so the set
  // is read once in total. Off by default: the structural checks are always done.
  bool verify_checksums = false;
  int max_open_shards = 64;        // shard files the I/O thread keeps open at once
  c10::Device device = c10::kCPU;  // CUDA: pinned staging memory and non-blocking copies
};

// The next global batch to produce: what a checkpoint stores.
struct Cursor {
  int64_t epoch = 0;
  int64_t batch = 0;
  bool operator==(const Cursor&) const = default;
};

struct Batch {
  at::Tensor images;       // float32 [b, C, H, W] in [-1, 1] on the device (H, W after pad_to)
  at::Tensor labels;       // int64 [b] on the device, or undefined without options.labels
  at::Tensor indices;      // int64 [b] on the CPU: the samples' indices in the whole set
  int64_t row_offset = 0;  // this rank's first row in the global batch, r*B/W
  Cursor cursor;           // the position of this batch
};

class Loader {
 public:
  // Reads the manifest and checks every shard (throws data::Error naming the file), then starts
  // the I/O thread at start.
  explicit Loader(LoaderOptions options, Cursor start = {});
  ~Loader();  // stops and joins the I/O thread, also while it waits or after it failed
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch, across epochs without end. An error of the I/O thread (a shard gone or
  // unreadable) is rethrown here as data::Error, after the batches read before it.
  Batch next();
  // The position of the batch next() returns next: save it, pass it back as start.
  Cursor cursor() const;
  int64_t batches_per_epoch() const;
  int64_t batch_size() const;  // this rank's rows per batch
  const Manifest& manifest() const;

  // Called from one thread: next() and cursor() are not synchronized with each other.
 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace difftrain::data
