// The loader's contract with the trainer and the distributed tests: W ranks with B/W rows see
// what 1 rank with B sees, every epoch is a permutation, cursors resume exactly (also with
// another W), flips do not depend on W, and pixels arrive as float NCHW in [-1, 1].
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <set>

#include "data/loader.hpp"
#include "test_files.hpp"

namespace difftrain::data {
namespace {

using testing::SyntheticSet;
using testing::TempDir;

std::vector<int64_t> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.contiguous().cpu();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// 103 samples of 5x4x3 in three shards written with the HDF5 C API (the documented layout,
// not h5shard), 7 classes.
class DataLoader : public ::testing::Test {
 protected:
  TempDir dir;
  SyntheticSet set = testing::write_synthetic_set(dir / "set", {40, 33, 30}, 5, 4, 3, 7);

  LoaderOptions options(int64_t global_batch, int rank = 0, int world = 1) const {
    LoaderOptions o;
    o.manifest = dir / "set";
    o.global_batch = global_batch;
    o.rank = rank;
    o.world = world;
    o.seed = 11;
    o.prefetch = 2;
    return o;
  }

  // The global batches from `start` for `steps` steps, assembled from W simulated ranks.
  std::vector<std::vector<int64_t>> global_batches(LoaderOptions o, int world, int steps,
                                                   Cursor start = {}) const {
    std::vector<std::unique_ptr<Loader>> ranks;
    for (int r = 0; r < world; ++r) {
      o.rank = r;
      o.world = world;
      ranks.push_back(std::make_unique<Loader>(o, start));
    }
    std::vector<std::vector<int64_t>> out;
    for (int s = 0; s < steps; ++s) {
      std::vector<int64_t> global;
      Cursor cursor{-1, -1};
      for (int r = 0; r < world; ++r) {
        const Batch b = ranks[static_cast<std::size_t>(r)]->next();
        EXPECT_EQ(b.row_offset, static_cast<int64_t>(global.size()));
        if (r > 0) {
          EXPECT_EQ(b.cursor, cursor) << "ranks out of step";
        }
        cursor = b.cursor;
        const auto idx = to_vector(b.indices);
        global.insert(global.end(), idx.begin(), idx.end());
      }
      out.push_back(global);
    }
    return out;
  }

  // The expected image of sample i as the loader returns it: CHW floats, optionally mirrored,
  // x / 127.5 - 1 in float32 as torch computes it.
  at::Tensor expected_image(int64_t i, bool flip) const {
    at::Tensor t = at::empty({set.channels, set.height, set.width});
    for (int64_t c = 0; c < set.channels; ++c)
      for (int64_t y = 0; y < set.height; ++y)
        for (int64_t x = 0; x < set.width; ++x)
          t[c][y][flip ? set.width - 1 - x : x] =
              static_cast<float>(testing::pixel_value(i, y, x, c)) / 127.5f - 1.0f;
    return t;
  }
};

TEST_F(DataLoader, BatchesHoldTheSamplesTheyName) {
  LoaderOptions o = options(12);
  o.labels = true;
  Loader loader(o);
  EXPECT_EQ(loader.batches_per_epoch(), 8);  // 103 / 12, last partial batch dropped
  EXPECT_EQ(loader.batch_size(), 12);
  EXPECT_EQ(loader.manifest().num_samples(), 103);
  for (int step = 0; step < 3; ++step) {
    const Batch b = loader.next();
    ASSERT_EQ(b.images.sizes(), (std::vector<int64_t>{12, 3, 5, 4}));
    EXPECT_EQ(b.images.scalar_type(), at::kFloat);
    EXPECT_EQ(b.labels.scalar_type(), at::kLong);
    EXPECT_EQ(b.cursor, (Cursor{0, step}));
    const auto idx = to_vector(b.indices);
    const auto labels = to_vector(b.labels);
    for (std::size_t j = 0; j < idx.size(); ++j) {
      EXPECT_EQ(labels[j], idx[j] % 7);
      EXPECT_TRUE(at::equal(b.images[static_cast<int64_t>(j)], expected_image(idx[j], false)))
          << "sample " << idx[j];
    }
    EXPECT_LE(b.images.max().item<float>(), 1.0f);
    EXPECT_GE(b.images.min().item<float>(), -1.0f);
  }
  EXPECT_EQ(loader.cursor(), (Cursor{0, 3}));
}

TEST_F(DataLoader, RanksTogetherSeeTheOneRankBatch) {
  for (const LastBatch last : {LastBatch::drop, LastBatch::wrap}) {
    LoaderOptions o = options(12);
    o.last_batch = last;
    const int steps = 20;  // over two epochs
    const auto one = global_batches(o, 1, steps);
    for (const int world : {2, 4})
      EXPECT_EQ(global_batches(o, world, steps), one) << world;
    // Uneven splits (10 rows over 4 ranks: 2, 3, 2, 3) too.
    LoaderOptions ten = options(10);
    ten.last_batch = last;
    EXPECT_EQ(global_batches(ten, 4, steps), global_batches(ten, 1, steps));
  }
}

TEST_F(DataLoader, EpochsArePermutations) {
  LoaderOptions o = options(12);
  for (const int world : {1, 2, 4}) {
    // drop: 8 batches, 96 distinct samples per epoch.
    o.last_batch = LastBatch::drop;
    const auto drop = global_batches(o, world, 16);
    for (int e = 0; e < 2; ++e) {
      std::set<int64_t> seen;
      for (int k = 0; k < 8; ++k)
        for (const int64_t i : drop[static_cast<std::size_t>(e * 8 + k)])
          EXPECT_TRUE(seen.insert(i).second) << "sample " << i << " twice in epoch " << e;
      EXPECT_EQ(seen.size(), 96u);
    }
    EXPECT_NE(drop[0], drop[8]) << "epochs should differ in order";
    // wrap: 9 batches, all 103 samples, 5 of them twice.
    o.last_batch = LastBatch::wrap;
    const auto wrap = global_batches(o, world, 18);
    for (int e = 0; e < 2; ++e) {
      std::map<int64_t, int> count;
      for (int k = 0; k < 9; ++k)
        for (const int64_t i : wrap[static_cast<std::size_t>(e * 9 + k)])
          ++count[i];
      EXPECT_EQ(count.size(), 103u) << "a sample missing in epoch " << e;
      int twice = 0;
      for (const auto& [i, c] : count)
        twice += c == 2;
      EXPECT_EQ(twice, 5);
    }
  }
}

TEST_F(DataLoader, SeedDecidesTheOrder) {
  LoaderOptions o = options(12);
  const auto a = global_batches(o, 1, 4);
  EXPECT_EQ(global_batches(o, 1, 4), a);
  o.seed = 12;
  EXPECT_NE(global_batches(o, 1, 4), a);
}

TEST_F(DataLoader, CursorResumesWithTheSameOrAnotherWorld) {
  for (const LastBatch last : {LastBatch::drop, LastBatch::wrap}) {
    LoaderOptions o = options(12);
    o.last_batch = last;
    const auto reference = global_batches(o, 1, 24);  // uninterrupted, 1 rank
    for (const int before : {1, 2, 4}) {
      for (const int after : {1, 2, 4}) {
        // Run `before` ranks for 5 steps (mid-epoch) and keep their cursor; then resume.
        Cursor saved;
        {
          o.rank = 0;
          o.world = before;
          Loader rank0(o);
          for (int s = 0; s < 5; ++s)
            rank0.next();
          saved = rank0.cursor();
        }
        EXPECT_EQ(saved, (Cursor{0, 5}));
        const auto resumed = global_batches(o, after, 19, saved);
        EXPECT_EQ(resumed,
                  std::vector<std::vector<int64_t>>(reference.begin() + 5, reference.end()))
            << before << " -> " << after << " ranks";
      }
    }
    // A cursor at an epoch's end resumes at the next epoch's start.
    Loader end(options(12), Cursor{1, 8});
    EXPECT_EQ(end.cursor(), (Cursor{2, 0}));
  }
}

TEST_F(DataLoader, FlipDependsOnSampleNotOnRanks) {
  LoaderOptions o = options(12);
  o.random_flip = true;
  // The image every sample gets in epoch 0, from 1 rank and from rank 2 of 4.
  std::map<int64_t, at::Tensor> one;
  {
    Loader loader(o);
    for (int k = 0; k < 8; ++k) {
      const Batch b = loader.next();
      const auto idx = to_vector(b.indices);
      for (std::size_t j = 0; j < idx.size(); ++j)
        one[idx[j]] = b.images[static_cast<int64_t>(j)];
    }
  }
  int flipped = 0;
  o.rank = 2;
  o.world = 4;
  Loader loader(o);
  for (int k = 0; k < 8; ++k) {
    const Batch b = loader.next();
    const auto idx = to_vector(b.indices);
    for (std::size_t j = 0; j < idx.size(); ++j) {
      const bool flip = flip_sample(o.seed, 0, idx[j]);
      flipped += flip;
      EXPECT_TRUE(at::equal(b.images[static_cast<int64_t>(j)], one.at(idx[j])));
      EXPECT_TRUE(at::equal(b.images[static_cast<int64_t>(j)], expected_image(idx[j], flip)));
    }
  }
  EXPECT_GT(flipped, 0);
  EXPECT_LT(flipped, 24);
}

TEST_F(DataLoader, PadsWithBlackAroundTheCenteredImage) {
  LoaderOptions o = options(4);
  o.pad_to = 8;
  Loader loader(o);
  const Batch b = loader.next();
  ASSERT_EQ(b.images.sizes(), (std::vector<int64_t>{4, 3, 8, 8}));
  const auto idx = to_vector(b.indices);
  // 5x4 in 8x8: rows 1..5, columns 2..5.
  const at::Tensor inner = b.images.index({at::indexing::Slice(), at::indexing::Slice(),
                                           at::indexing::Slice(1, 6), at::indexing::Slice(2, 6)});
  for (std::size_t j = 0; j < idx.size(); ++j)
    EXPECT_TRUE(at::equal(inner[static_cast<int64_t>(j)], expected_image(idx[j], false)));
  const float total = b.images.sum().item<float>();
  EXPECT_NEAR(total - inner.sum().item<float>(), -1.0f * 4 * 3 * (64 - 20), 1e-3);
  o.pad_to = 4;
  EXPECT_THROW(Loader{o}, Error);
}

TEST_F(DataLoader, RejectsBadOptions) {
  EXPECT_THROW(Loader(options(0)), Error);
  EXPECT_THROW(Loader(options(200)), Error);  // drop: not one batch
  EXPECT_NO_THROW({
    LoaderOptions o = options(200);
    o.last_batch = LastBatch::wrap;
    Loader l(o);
    EXPECT_EQ(l.next().images.size(0), 200);
  });
  EXPECT_THROW(Loader(options(12, 4, 4)), Error);
  EXPECT_THROW(Loader(options(12), Cursor{0, 9}), Error);
  EXPECT_THROW(Loader(options(12), Cursor{-1, 0}), Error);
  TempDir unlabeled;
  testing::write_synthetic_set(unlabeled / "u", {5}, 2, 2, 1, 0);
  LoaderOptions o = options(2);
  o.manifest = unlabeled / "u";
  o.labels = true;
  EXPECT_THROW(Loader{o}, Error);
}

TEST_F(DataLoader, DestructionNeverHangs) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    Loader idle(options(12));  // the I/O thread fills the queue and waits
    if (i % 2) idle.next();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST_F(DataLoader, IoErrorsReachNext) {
  LoaderOptions o = options(12);
  o.max_open_shards = 1;  // the I/O thread reopens shards all the time
  Loader loader(o);
  loader.next();
  std::filesystem::remove(dir / "set/part1.h5");
  try {
    for (int i = 0; i < 50; ++i)
      loader.next();
    FAIL() << "no error after a shard vanished";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("part1.h5"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("missing shard"), std::string::npos) << e.what();
  }
  EXPECT_THROW(loader.next(), Error);  // and stays failed
}

TEST(DataLoaderFashion, ReadsConvertedFashionMnist) {
  const std::string source = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(source + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  TempDir dir;
  const auto r = testing::h5shard("convert --format idx --split test --quiet --shards 2 --input " +
                                  source + " --out " + (dir / "fm"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const testing::Idx idx = testing::read_idx(source + "/t10k-images-idx3-ubyte.gz");
  const testing::Idx labels = testing::read_idx(source + "/t10k-labels-idx1-ubyte.gz");
  LoaderOptions o;
  o.manifest = dir / "fm";
  o.global_batch = 256;
  o.labels = true;
  o.pad_to = 32;
  o.verify_checksums = true;
  Loader loader(o);
  EXPECT_EQ(loader.batches_per_epoch(), 39);
  const Batch b = loader.next();
  ASSERT_EQ(b.images.sizes(), (std::vector<int64_t>{256, 1, 32, 32}));
  const auto indices = to_vector(b.indices);
  const auto batch_labels = to_vector(b.labels);
  for (std::size_t j = 0; j < indices.size(); ++j) {
    const auto i = static_cast<std::size_t>(indices[j]);
    EXPECT_EQ(batch_labels[j], labels.data[i]);
    const at::Tensor want =
        at::from_blob(const_cast<uint8_t*>(idx.data.data() + i * 784), {28, 28}, at::kByte)
                .to(at::kFloat) /
            127.5 -
        1;
    EXPECT_TRUE(
        at::equal(b.images[static_cast<int64_t>(j)][0].slice(0, 2, 30).slice(1, 2, 30), want));
  }
}

}  // namespace
}  // namespace difftrain::data
