#include "data/loader.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <thread>

#include "data/bounded_queue.hpp"
#include "data/canvas.hpp"
#include "data/h5.hpp"
#include "data/shard_reader.hpp"
#include "data/shard_set.hpp"

namespace difftrain::data {
namespace {

Cursor advance(Cursor c, int64_t batches_per_epoch) {
  if (++c.batch == batches_per_epoch) c = Cursor{c.epoch + 1, 0};
  return c;
}

}  // namespace

struct Loader::State {
  LoaderOptions options;
  Manifest manifest;
  int64_t per_epoch = 0;
  RowRange rows;
  Canvas canvas{};              // where each sample sits in the batch's images
  std::vector<int64_t> labels;  // of the whole set, when options.labels
  Cursor consumer;              // the batch next() returns next
  BoundedQueue<Batch> queue;
  std::thread io;

  explicit State(LoaderOptions o)
      : options(std::move(o)),
        manifest(read_manifest(options.manifest)),
        queue(static_cast<std::size_t>(std::max(options.prefetch, 1))) {}

  void produce(Cursor start) noexcept;
  Batch read_batch(ShardSet& shards, const std::vector<int64_t>& perm, Cursor c) const;
};

Batch Loader::State::read_batch(ShardSet& shards, const std::vector<int64_t>& perm,
                                Cursor c) const {
  const std::vector<int64_t> samples = batch_samples(perm, c.batch, options.global_batch, rows);
  const auto b = static_cast<int64_t>(samples.size());
  const Canvas& g = canvas;

  // Read in index order: neighbours in a shard share pages and B-tree nodes.
  std::vector<std::size_t> order(samples.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t a, std::size_t z) { return samples[a] < samples[z]; });
  std::vector<uint8_t> raw(static_cast<std::size_t>(b * shards.sample_bytes()));
  for (const std::size_t i : order)
    shards.read(samples[i], raw.data() + static_cast<int64_t>(i) * shards.sample_bytes());

  const bool pinned = options.device.is_cuda();
  auto float_opts = at::TensorOptions().dtype(at::kFloat).pinned_memory(pinned);
  Batch batch;
  batch.images = at::empty({b, g.channels, g.out_height, g.out_width}, float_opts);
  if (g.out_height != g.height || g.out_width != g.width) batch.images.fill_(-1.0f);
  float* out = batch.images.data_ptr<float>();
  const int64_t sample_floats = g.channels * g.out_height * g.out_width;
  for (int64_t i = 0; i < b; ++i) {
    const bool flip = options.random_flip &&
                      flip_sample(options.seed, c.epoch, samples[static_cast<std::size_t>(i)]);
    to_network_pixels(raw.data() + i * shards.sample_bytes(), out + i * sample_floats, g, flip);
  }
  batch.indices = at::empty({b}, at::TensorOptions().dtype(at::kLong));
  std::copy(samples.begin(), samples.end(), batch.indices.data_ptr<int64_t>());
  if (options.labels) {
    batch.labels = at::empty({b}, at::TensorOptions().dtype(at::kLong).pinned_memory(pinned));
    int64_t* l = batch.labels.data_ptr<int64_t>();
    for (int64_t i = 0; i < b; ++i)
      l[i] = labels[static_cast<std::size_t>(samples[static_cast<std::size_t>(i)])];
  }
  batch.row_offset = rows.begin;
  batch.cursor = c;
  return batch;
}

void Loader::State::produce(Cursor c) noexcept {
  try {
    ShardSet shards(manifest, static_cast<std::size_t>(std::max(options.max_open_shards, 1)));
    std::vector<int64_t> perm;
    int64_t perm_epoch = -1;
    while (!queue.closed()) {
      if (perm_epoch != c.epoch) {
        perm = epoch_permutation(manifest.num_samples(), options.seed, c.epoch);
        perm_epoch = c.epoch;
      }
      if (!queue.push(read_batch(shards, perm, c))) break;
      c = advance(c, per_epoch);
    }
  } catch (const h5::Error& e) {
    queue.fail(std::make_exception_ptr(Error(e.what())));
  } catch (const Error&) {
    queue.fail(std::current_exception());
  } catch (const std::exception& e) {
    queue.fail(std::make_exception_ptr(Error(manifest.path + ": reading a batch: " + e.what())));
  } catch (...) {
    queue.fail(std::make_exception_ptr(Error(manifest.path + ": reading a batch failed")));
  }
}

Loader::Loader(LoaderOptions options, Cursor start)
    : state_(std::make_unique<State>(std::move(options))) {
  State& s = *state_;
  const LoaderOptions& o = s.options;
  const Manifest& m = s.manifest;
  const std::string& where = m.path;
  try {
    s.per_epoch = data::batches_per_epoch(m.num_samples(), o.global_batch, o.last_batch);
    s.rows = rank_rows(o.global_batch, o.rank, o.world);
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  if (o.labels && !m.labels) throw Error(where + ": labels requested, the set has none");
  s.canvas = stored_canvas(m.height, m.width, m.channels);
  if (o.pad_to) {
    if (*o.pad_to < m.height || *o.pad_to < m.width)
      throw Error(where + ": pad_to " + std::to_string(*o.pad_to) + " is smaller than the " +
                  std::to_string(m.height) + "x" + std::to_string(m.width) + " images");
    s.canvas = centred_canvas(m.height, m.width, m.channels, *o.pad_to);
  }
  if (start.epoch < 0 || start.batch < 0 || start.batch > s.per_epoch)
    throw Error(where + ": cursor (epoch " + std::to_string(start.epoch) + ", batch " +
                std::to_string(start.batch) + ") is outside the " + std::to_string(s.per_epoch) +
                " batches of an epoch (was the global batch size changed?)");
  if (start.batch == s.per_epoch) start = Cursor{start.epoch + 1, 0};

  // Every shard is checked before training starts, not when first drawn hours later.
  for (std::size_t i = 0; i < m.shards.size(); ++i) {
    const h5::File f = open_shard(m, i);
    if (o.labels) {
      const std::vector<int64_t> l = read_shard_labels(f, m);
      s.labels.insert(s.labels.end(), l.begin(), l.end());
    }
    if (o.verify_checksums && static_cast<int>(i % static_cast<std::size_t>(o.world)) == o.rank)
      check_checksum(f, m.shards[i]);
  }
  s.consumer = start;
  s.io = std::thread([&s, start] { s.produce(start); });
}

Loader::~Loader() {
  state_->queue.close();
  if (state_->io.joinable()) state_->io.join();
}

Batch Loader::next() {
  State& s = *state_;
  Batch b = s.queue.pop();
  s.consumer = advance(b.cursor, s.per_epoch);
  if (!s.options.device.is_cpu()) {
    b.images = b.images.to(s.options.device, /*non_blocking=*/true);
    if (b.labels.defined()) b.labels = b.labels.to(s.options.device, /*non_blocking=*/true);
  }
  return b;
}

Cursor Loader::cursor() const {
  return state_->consumer;
}
int64_t Loader::batches_per_epoch() const {
  return state_->per_epoch;
}
int64_t Loader::batch_size() const {
  return state_->rows.size();
}
const Manifest& Loader::manifest() const {
  return state_->manifest;
}

}  // namespace difftrain::data
