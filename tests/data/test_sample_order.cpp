// The pure sample-order functions and the manifest format (no torch, no I/O thread).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>
#include <set>
#include <thread>

#include "data/bounded_queue.hpp"
#include "data/error.hpp"
#include "data/manifest.hpp"
#include "data/sample_order.hpp"
#include "test_files.hpp"

namespace difftrain::data {
namespace {

bool is_permutation_of_range(std::vector<int64_t> p) {
  std::sort(p.begin(), p.end());
  for (std::size_t i = 0; i < p.size(); ++i)
    if (p[i] != static_cast<int64_t>(i)) return false;
  return true;
}

TEST(DataSampleOrder, PermutationIsAPermutation) {
  for (const int64_t n : {0, 1, 2, 7, 1000}) {
    const auto p = epoch_permutation(n, 42, 3);
    EXPECT_EQ(static_cast<int64_t>(p.size()), n);
    EXPECT_TRUE(is_permutation_of_range(p)) << n;
  }
}

TEST(DataSampleOrder, PermutationDependsOnSeedAndEpochOnly) {
  EXPECT_EQ(epoch_permutation(500, 1, 0), epoch_permutation(500, 1, 0));
  EXPECT_NE(epoch_permutation(500, 1, 0), epoch_permutation(500, 1, 1));
  EXPECT_NE(epoch_permutation(500, 1, 0), epoch_permutation(500, 2, 0));
}

// The order is part of the checkpoint contract: a run resumed on another machine or compiler must
// see the same samples. These values pin the generator (mt19937_64, our Fisher-Yates and
// bounded draws, splitmix64 keys).
TEST(DataSampleOrder, PermutationIsPinned) {
  EXPECT_EQ(epoch_permutation(10, 0, 0), (std::vector<int64_t>{2, 7, 6, 0, 5, 9, 4, 8, 1, 3}));
  EXPECT_EQ(epoch_permutation(10, 1234, 5), (std::vector<int64_t>{9, 7, 3, 4, 2, 5, 8, 6, 0, 1}));
  std::vector<int> flips;
  for (int64_t i = 0; i < 16; ++i)
    flips.push_back(flip_sample(7, 2, i));
  EXPECT_EQ(flips, (std::vector<int>{0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 1}));
}

TEST(DataSampleOrder, PermutationLooksUniform) {
  // Position of element 0 over many seeds: every slot about equally often.
  std::vector<int> count(8, 0);
  for (uint64_t seed = 0; seed < 8000; ++seed) {
    const auto p = epoch_permutation(8, seed, 0);
    ++count[static_cast<std::size_t>(std::find(p.begin(), p.end(), 0) - p.begin())];
  }
  for (const int c : count)
    EXPECT_NEAR(c, 1000, 150);
}

TEST(DataSampleOrder, FlipIsBalanced) {
  int flips = 0;
  for (int64_t i = 0; i < 10000; ++i)
    flips += flip_sample(3, 1, i);
  EXPECT_NEAR(flips, 5000, 300);
  EXPECT_NE(flip_sample(3, 1, 17) + flip_sample(3, 2, 17) + flip_sample(3, 3, 17) +
                flip_sample(3, 4, 17) + flip_sample(3, 5, 17) + flip_sample(3, 6, 17),
            0);  // not constant over epochs (6 epochs: 1/64 chance of all-false per index)
}

TEST(DataSampleOrder, RankRowsPartitionTheGlobalBatch) {
  for (const int world : {1, 2, 3, 4, 8}) {
    for (const int64_t b : {8, 10, 64, 65}) {
      int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const RowRange rows = rank_rows(b, r, world);
        EXPECT_EQ(rows.begin, next);
        EXPECT_GE(rows.size(), b / world);
        EXPECT_LE(rows.size(), b / world + 1);
        next = rows.end;
      }
      EXPECT_EQ(next, b);
    }
  }
  EXPECT_EQ(rank_rows(10, 1, 4).begin, 2);
  EXPECT_EQ(rank_rows(10, 1, 4).end, 5);
  EXPECT_THROW(rank_rows(10, 4, 4), Error);
  EXPECT_THROW(rank_rows(3, 0, 4), Error);
}

TEST(DataSampleOrder, BatchesPerEpoch) {
  EXPECT_EQ(batches_per_epoch(103, 12, LastBatch::drop), 8);
  EXPECT_EQ(batches_per_epoch(103, 12, LastBatch::wrap), 9);
  EXPECT_EQ(batches_per_epoch(96, 12, LastBatch::wrap), 8);
  EXPECT_EQ(batches_per_epoch(5, 12, LastBatch::wrap), 1);
  EXPECT_THROW(batches_per_epoch(5, 12, LastBatch::drop), Error);
  EXPECT_EQ(parse_last_batch("wrap"), LastBatch::wrap);
  EXPECT_THROW(parse_last_batch("keep"), Error);
}

TEST(DataSampleOrder, LastBatchWrapsToTheEpochStart) {
  const std::vector<int64_t> perm{4, 2, 0, 1, 3};
  EXPECT_EQ(batch_samples(perm, 1, 3, {0, 3}), (std::vector<int64_t>{1, 3, 4}));
  // A global batch larger than the set wraps as often as needed.
  EXPECT_EQ(batch_samples(perm, 0, 7, {3, 7}), (std::vector<int64_t>{1, 3, 4, 2}));
}

TEST(DataBoundedQueue, RethrowsAfterDrainingAndCloseReleasesProducer) {
  BoundedQueue<int> q(2);
  EXPECT_TRUE(q.push(1));
  q.fail(std::make_exception_ptr(Error("boom")));
  EXPECT_EQ(q.pop(), 1);
  EXPECT_THROW(q.pop(), Error);
  EXPECT_THROW(q.pop(), Error);
  BoundedQueue<int> full(1);
  EXPECT_TRUE(full.push(1));
  std::thread producer([&] { EXPECT_FALSE(full.push(2)); });
  full.close();
  producer.join();
}

class DataManifest : public ::testing::Test {
 protected:
  testing::TempDir dir;
  std::string path() const { return dir / "manifest.json"; }
  void write(const std::string& json) { testing::write_text(path(), json); }
  // Expects read_manifest to fail with a message naming the file and containing `what`.
  void expect_error(const std::string& json, const std::string& what) {
    write(json);
    try {
      read_manifest(dir.path());
      FAIL() << "no error for " << json;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path()), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  }
};

TEST_F(DataManifest, RoundTrip) {
  Manifest m;
  m.name = "set";
  m.height = 28;
  m.width = 30;
  m.channels = 1;
  m.labels = true;
  m.num_classes = 2;
  m.class_names = {"a", "b"};
  m.shards = {{"s0.h5", 10, 1234, "crc32:0123abcd"}, {"s1.h5", 5, -1, ""}};
  m.source = R"({"tool":"test"})";
  write_manifest(m, path());
  const Manifest r = read_manifest(dir.path());
  EXPECT_EQ(r.name, "set");
  EXPECT_EQ(r.height, 28);
  EXPECT_EQ(r.width, 30);
  EXPECT_EQ(r.num_samples(), 15);
  EXPECT_EQ(r.class_names, m.class_names);
  EXPECT_EQ(r.shards[0].bytes, 1234);
  EXPECT_EQ(r.shards[0].checksum, "crc32:0123abcd");
  EXPECT_EQ(r.shards[1].bytes, -1);
  EXPECT_EQ(r.shards[1].checksum, "");
  EXPECT_EQ(r.shard_path(1), dir / "s1.h5");
  EXPECT_EQ(r.source, R"({"tool":"test"})");
  EXPECT_FALSE(std::filesystem::exists(path() + ".partial"));
}

const char* kGood = R"({"format": "difftrain-shards", "format_version": 1, "height": 4,
  "width": 4, "channels": 1, "labels": false, "shards": [{"file": "a.h5", "num_samples": 3}]})";

TEST_F(DataManifest, BadManifestsAreNamed) {
  write(kGood);
  EXPECT_NO_THROW(read_manifest(path()));
  expect_error("{", "not valid JSON");
  expect_error("[]", "not a manifest");
  expect_error(R"({"format": "x"})", "not a difftrain shard manifest");
  std::string j = kGood;
  expect_error(
      std::string(kGood).replace(j.find("\"format_version\": 1"), 19, "\"format_version\": 9"),
      "format_version 9");
  expect_error(std::string(kGood).replace(j.find("\"height\": 4"), 11, "\"height\": 0"), "height");
  expect_error(std::string(kGood).replace(j.find("\"width\": 4"), 10, "\"width\": \"4\""),
               "'width' is not an integer");
  expect_error(std::string(kGood).replace(j.find("\"num_samples\": 3"), 16, "\"num_samples\": 0"),
               "empty");
  expect_error(std::string(kGood).replace(j.find("\"a.h5\""), 6, "\"/etc/a.h5\""), "relative");
  expect_error(std::string(kGood).replace(j.find("\"labels\": false"), 15, "\"labels\": true"),
               "num_classes");
  expect_error(std::string(kGood).replace(j.find("\"num_samples\": 3"), 16,
                                          "\"num_samples\": 3, \"checksum\": \"md5:1\""),
               "crc32");
  std::filesystem::remove(path());
  try {
    read_manifest(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("manifest.json"), std::string::npos);
  }
}

}  // namespace
}  // namespace difftrain::data
