// `h5shard convert | inspect | verify` end to end: every input format, checked against the source
// with independent readers (zlib for IDX, the HDF5 C API for the shards).
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "data/manifest.hpp"
#include "test_files.hpp"

namespace difftrain::testing {
namespace {

namespace fs = std::filesystem;

const std::string kFashion = "/usr/share/datasets/fashion-mnist";
const std::string kFashionNames =
    "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot";

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// All images and labels of a converted set, in order, read with the HDF5 C API.
struct SetContents {
  data::Manifest manifest;
  std::vector<uint8_t> images;
  std::vector<int64_t> labels;
};

SetContents read_set(const std::string& dir) {
  SetContents c{data::read_manifest(dir), {}, {}};
  for (std::size_t i = 0; i < c.manifest.shards.size(); ++i) {
    std::vector<int64_t> shape;
    const auto img = read_raw_uint8(c.manifest.shard_path(i), "images", &shape);
    EXPECT_EQ(shape, (std::vector<int64_t>{c.manifest.shards[i].num_samples, c.manifest.height,
                                           c.manifest.width, c.manifest.channels}));
    c.images.insert(c.images.end(), img.begin(), img.end());
    if (c.manifest.labels) {
      const auto l = read_raw_int64(c.manifest.shard_path(i), "labels");
      c.labels.insert(c.labels.end(), l.begin(), l.end());
    }
  }
  return c;
}

std::map<int64_t, int64_t> histogram(const std::vector<int64_t>& labels) {
  std::map<int64_t, int64_t> h;
  for (const int64_t l : labels)
    ++h[l];
  return h;
}

TEST(DataH5shard, FashionMnistTrainEqualsIdxSource) {
  if (!fs::exists(kFashion + "/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  TempDir dir;
  const RunResult r =
      h5shard("convert --format idx --input " + kFashion + " --split train --shards 3 --out " +
              (dir / "train") + " --class-names '" + kFashionNames + "'");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  const Idx images = read_idx(kFashion + "/train-images-idx3-ubyte.gz");
  const Idx labels = read_idx(kFashion + "/train-labels-idx1-ubyte.gz");
  const SetContents set = read_set(dir / "train");
  EXPECT_EQ(set.manifest.num_samples(), 60000);
  EXPECT_EQ(set.manifest.shards.size(), 3u);
  EXPECT_EQ(set.manifest.height, 28);
  EXPECT_EQ(set.manifest.width, 28);
  EXPECT_EQ(set.manifest.channels, 1);
  EXPECT_EQ(set.manifest.num_classes, 10);
  EXPECT_EQ(set.manifest.class_names.at(9), "Ankle boot");
  EXPECT_TRUE(set.images == images.data) << "pixels differ from the IDX source";
  ASSERT_EQ(set.labels.size(), labels.data.size());
  for (std::size_t i = 0; i < set.labels.size(); ++i)
    ASSERT_EQ(set.labels[i], labels.data[i]) << "label " << i;
  const auto h = histogram(set.labels);
  ASSERT_EQ(h.size(), 10u);
  for (const auto& [label, count] : h)
    EXPECT_EQ(count, 6000) << "class " << label;

  const nlohmann::json source = nlohmann::json::parse(set.manifest.source);
  EXPECT_EQ(source.at("format"), "idx");
  EXPECT_EQ(source.at("split"), "train");
  EXPECT_TRUE(contains(source.at("command").get<std::string>(), "--shards 3"));

  const RunResult verify = h5shard("verify " + (dir / "train"));
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  const RunResult inspect = h5shard("inspect " + (dir / "train") + " --grid " + (dir / "grid.png"));
  EXPECT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_TRUE(contains(inspect.output, "Ankle boot")) << inspect.output;
  EXPECT_TRUE(contains(inspect.output, "6000")) << inspect.output;
  EXPECT_TRUE(contains(read_text(dir / "grid.png").substr(0, 8), "PNG"));
  // A lone shard file can be inspected too.
  const RunResult lone = h5shard("inspect " + set.manifest.shard_path(0));
  EXPECT_EQ(lone.exit_code, 0) << lone.output;
  EXPECT_TRUE(contains(lone.output, "20000")) << lone.output;
}

TEST(DataH5shard, FashionMnistTestSplitAndCompression) {
  if (!fs::exists(kFashion + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  TempDir dir;
  const Idx images = read_idx(kFashion + "/t10k-images-idx3-ubyte.gz");
  for (const std::string compress : {"none", "gzip", "lzf"}) {
    const std::string out = dir / compress;
    const RunResult r =
        h5shard("convert --format idx --input " + kFashion +
                " --split test --samples-per-shard 4000 --compress " + compress + " --out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const data::Manifest m = data::read_manifest(out);
    EXPECT_EQ(m.num_samples(), 10000);
    EXPECT_EQ(m.shards.size(), 3u);
    EXPECT_EQ(m.compression, compress);
    // verify recomputes the checksum of the decompressed data, which the writer took from the
    // source bytes: equal checksums mean the round trip is exact.
    const RunResult v = h5shard("verify " + out);
    EXPECT_EQ(v.exit_code, 0) << v.output;
    if (compress != "lzf") {  // the C API alone does not load Debian's lzf plugin
      const SetContents set = read_set(out);
      EXPECT_TRUE(set.images == images.data);
      for (const auto& [label, count] : histogram(set.labels))
        EXPECT_EQ(count, 1000);
    }
  }
}

TEST(DataH5shard, NpyArraysWithHoldout) {
  TempDir dir;
  // 50 samples of 6x5, each pixel encoding its sample index: split parts can be told apart.
  const int64_t n = 50, h = 6, w = 5;
  std::vector<uint8_t> images;
  std::vector<int32_t> labels;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t p = 0; p < h * w; ++p)
      images.push_back(static_cast<uint8_t>(i + p));
    labels.push_back(static_cast<int32_t>(i % 3));
  }
  write_npy(dir / "x.npy", "|u1", {n, h, w}, images.data(), images.size());
  write_npy(dir / "y.npy", "<i4", {n}, labels.data(), labels.size() * 4);

  ASSERT_EQ(h5shard("convert --format npy --input " + (dir / "x.npy") + " " + (dir / "y.npy") +
                    " --shards 2 --out " + (dir / "all"))
                .exit_code,
            0);
  const SetContents all = read_set(dir / "all");
  EXPECT_EQ(all.images, images);
  EXPECT_EQ(all.manifest.channels, 1);
  EXPECT_EQ(all.manifest.num_classes, 3);
  for (int64_t i = 0; i < n; ++i)
    EXPECT_EQ(all.labels[static_cast<std::size_t>(i)], i % 3);

  std::set<int> seen;
  for (const std::string split : {"train", "test"}) {
    const RunResult r =
        h5shard("convert --format npy --input " + (dir / "x.npy") + " " + (dir / "y.npy") +
                " --holdout 0.2 --holdout-seed 5 --split " + split + " --out " + (dir / split));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const SetContents part = read_set(dir / split);
    EXPECT_EQ(part.manifest.num_samples(), split == "test" ? 10 : 40);
    for (int64_t i = 0; i < part.manifest.num_samples(); ++i) {
      const int sample = part.images[static_cast<std::size_t>(i * h * w)];
      EXPECT_TRUE(seen.insert(sample).second) << "sample " << sample << " in both parts";
      EXPECT_EQ(part.labels[static_cast<std::size_t>(i)], sample % 3);
    }
  }
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(n));

  // [N, H, W, C] arrays keep their channels.
  write_npy(dir / "rgb.npy", "|u1", {10, 3, 1, 3}, images.data(), 90);
  ASSERT_EQ(h5shard("convert --format npy --input " + (dir / "rgb.npy") + " --out " + (dir / "rgb"))
                .exit_code,
            0);
  const SetContents rgb = read_set(dir / "rgb");
  EXPECT_EQ(rgb.manifest.channels, 3);
  EXPECT_FALSE(rgb.manifest.labels);
  EXPECT_EQ(rgb.images, std::vector<uint8_t>(images.begin(), images.begin() + 90));
}

TEST(DataH5shard, CifarBinaryBatchesBecomeHwc) {
  TempDir dir;
  fs::create_directories(dir / "cifar");
  // Three CIFAR-10 records: label byte, then R, G and B planes of 32x32.
  std::string bytes;
  for (int r = 0; r < 3; ++r) {
    bytes += static_cast<char>(r * 3);
    for (int c = 0; c < 3; ++c)
      for (int p = 0; p < 1024; ++p)
        bytes += static_cast<char>((r * 50 + c * 80 + p) % 256);
  }
  write_text(dir / "cifar/data_batch_1.bin", bytes);
  write_text(dir / "cifar/test_batch.bin", bytes.substr(0, 3073));
  std::string names;
  for (int k = 0; k < 10; ++k)
    names += "class" + std::to_string(k) + "\n";
  write_text(dir / "cifar/batches.meta.txt", names);

  ASSERT_EQ(h5shard("convert --format cifar --input " + (dir / "cifar") + " --out " + (dir / "out"))
                .exit_code,
            0);
  const SetContents set = read_set(dir / "out");
  EXPECT_EQ(set.manifest.num_samples(), 3);
  EXPECT_EQ(set.manifest.height, 32);
  EXPECT_EQ(set.manifest.channels, 3);
  EXPECT_EQ(set.manifest.num_classes, 10);
  EXPECT_EQ(set.manifest.class_names.at(6), "class6");
  EXPECT_EQ(set.labels, (std::vector<int64_t>{0, 3, 6}));
  for (int r = 0; r < 3; ++r)
    for (int p = 0; p < 1024; p += 37)
      for (int c = 0; c < 3; ++c)
        ASSERT_EQ(set.images[static_cast<std::size_t>(r * 3072 + p * 3 + c)],
                  static_cast<uint8_t>((r * 50 + c * 80 + p) % 256));

  ASSERT_EQ(h5shard("convert --format cifar --split test --input " + (dir / "cifar") + " --out " +
                    (dir / "test"))
                .exit_code,
            0);
  EXPECT_EQ(data::read_manifest(dir / "test").num_samples(), 1);

  // CIFAR-100: coarse and fine label bytes.
  std::string hundred;
  for (int r = 0; r < 2; ++r) {
    hundred += static_cast<char>(r + 4);   // coarse
    hundred += static_cast<char>(r + 70);  // fine
    hundred += std::string(3072, static_cast<char>(r));
  }
  write_text(dir / "train.bin", hundred);
  ASSERT_EQ(
      h5shard("convert --format cifar --input " + (dir / "train.bin") + " --out " + (dir / "c100"))
          .exit_code,
      0);
  EXPECT_EQ(read_set(dir / "c100").labels, (std::vector<int64_t>{70, 71}));
  EXPECT_EQ(data::read_manifest(dir / "c100").num_classes, 100);
  ASSERT_EQ(h5shard("convert --format cifar --cifar-labels coarse --input " + (dir / "train.bin") +
                    " --out " + (dir / "c20"))
                .exit_code,
            0);
  EXPECT_EQ(read_set(dir / "c20").labels, (std::vector<int64_t>{4, 5}));
}

TEST(DataH5shard, ImageFolderWithClassesAndResize) {
  TempDir dir;
  const std::string root = dir / "pics";
  fs::create_directories(root + "/cat");
  fs::create_directories(root + "/dog/nested");
  // cat/a: 8x8 RGB with four uniform 4x4 quadrants; shrinking to 2x2 must average each quadrant.
  std::vector<uint8_t> quads(8 * 8 * 3);
  const uint8_t q[4][3] = {{10, 20, 30}, {200, 100, 0}, {0, 255, 0}, {90, 90, 90}};
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x)
      for (int c = 0; c < 3; ++c)
        quads[(y * 8 + x) * 3 + c] = q[(y / 4) * 2 + x / 4][c];
  write_png(root + "/cat/a.png", 8, 8, 3, quads);
  // cat/b: 6x10 gray (center-cropped to 6x6), uniform: stays uniform at any size.
  write_png(root + "/cat/b.png", 6, 10, 1, std::vector<uint8_t>(60, 77));
  // dog/nested/c: a JPEG of one color.
  std::vector<uint8_t> jpeg(16 * 16 * 3);
  for (std::size_t i = 0; i < jpeg.size(); ++i)
    jpeg[i] = i % 3 == 0 ? 200 : 40;
  write_jpeg(root + "/dog/nested/c.jpg", 16, 16, 3, jpeg);
  write_text(root + "/dog/notes.txt", "not an image, skipped");

  const RunResult r =
      h5shard("convert --format images --input " + root + " --resize 2 --out " + (dir / "out"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const SetContents set = read_set(dir / "out");
  EXPECT_EQ(set.manifest.num_samples(), 3);
  EXPECT_EQ(set.manifest.height, 2);
  EXPECT_EQ(set.manifest.channels, 3);
  EXPECT_EQ(set.manifest.class_names, (std::vector<std::string>{"cat", "dog"}));
  EXPECT_EQ(set.labels, (std::vector<int64_t>{0, 0, 1}));
  for (int p = 0; p < 4; ++p)
    for (int c = 0; c < 3; ++c)
      EXPECT_EQ(set.images[static_cast<std::size_t>(p * 3 + c)], q[p][c]);
  for (int i = 12; i < 24; ++i)
    EXPECT_EQ(set.images[static_cast<std::size_t>(i)], 77);
  for (int i = 24; i < 36; ++i)
    EXPECT_NEAR(set.images[static_cast<std::size_t>(i)], i % 3 == 0 ? 200 : 40, 3);

  // Enlarging interpolates (Catmull-Rom), it does not repeat pixels.
  ASSERT_EQ(h5shard("convert --format images --channels 1 --no-labels --input " + root +
                    " --resize 16 --out " + (dir / "big"))
                .exit_code,
            0);
  const SetContents big = read_set(dir / "big");
  EXPECT_FALSE(big.manifest.labels);
  EXPECT_EQ(big.manifest.channels, 1);
  std::set<uint8_t> levels(big.images.begin(), big.images.begin() + 256);
  EXPECT_GT(levels.size(), 4u) << "an 8x8 four-level image enlarged with more than four levels";

  // Without --resize, differently sized images are an error naming the file.
  const RunResult mixed =
      h5shard("convert --format images --input " + root + " --out " + (dir / "x"));
  EXPECT_EQ(mixed.exit_code, 2);
  EXPECT_TRUE(contains(mixed.output, "b.png")) << mixed.output;
  EXPECT_TRUE(contains(mixed.output, "--resize")) << mixed.output;
}

TEST(DataH5shard, FailedConversionLeavesNoPartialFilesOrManifest) {
  TempDir dir;
  const std::string root = dir / "pics";
  fs::create_directories(root);
  for (int i = 0; i < 6; ++i)
    write_png(root + "/img" + std::to_string(i) + ".png", 4, 4, 3, std::vector<uint8_t>(48, 9));
  write_text(root + "/img5.png", "broken");  // the last image: fails in the second shard
  fs::create_directories(dir / "out");
  write_text(dir / "out/manifest.json", "{}");  // an old manifest must not survive
  const RunResult r =
      h5shard("convert --format images --input " + root + " --shards 2 --out " + (dir / "out"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_TRUE(contains(r.output, "img5.png")) << r.output;
  EXPECT_TRUE(contains(r.output, "not a PNG or JPEG")) << r.output;
  EXPECT_FALSE(fs::exists(dir / "out/manifest.json"));
  for (const auto& e : fs::directory_iterator(dir / "out"))
    EXPECT_NE(e.path().extension(), ".partial") << e.path();
}

TEST(DataH5shard, BadInputsAreNamed) {
  TempDir dir;
  const auto expect_bad = [&](const std::string& args, const std::string& file,
                              const std::string& what) {
    const RunResult r = h5shard("convert " + args + " --out " + (dir / "out"));
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    EXPECT_TRUE(contains(r.output, file)) << r.output;
    EXPECT_TRUE(contains(r.output, what)) << r.output;
  };
  // A truncated IDX file (plain, not gzipped).
  std::string idx("\0\0\x08\x03\0\0\0\x02\0\0\0\x04\0\0\0\x04", 16);
  write_text(dir / "short-idx3-ubyte", idx + std::string(20, 'x'));
  expect_bad("--format idx --input " + (dir / "short-idx3-ubyte"), "short-idx3-ubyte", "truncated");
  write_text(dir / "junk", "hello world");
  expect_bad("--format idx --input " + (dir / "junk"), "junk", "not an IDX file");
  // npy: wrong dtype, truncated data.
  const float f[4] = {0, 1, 2, 3};
  write_npy(dir / "f.npy", "<f4", {1, 2, 2}, f, sizeof f);
  expect_bad("--format npy --input " + (dir / "f.npy"), "f.npy", "not an integer type");
  const uint8_t u[3] = {1, 2, 3};
  write_npy(dir / "t.npy", "|u1", {1, 2, 2}, u, 3);
  expect_bad("--format npy --input " + (dir / "t.npy"), "t.npy", "truncated");
  // CIFAR: not a whole number of records.
  write_text(dir / "data_batch_9.bin", std::string(3000, 'x'));
  expect_bad("--format cifar --input " + (dir / "data_batch_9.bin"), "data_batch_9.bin",
             "not a whole number");
  // More shards than samples; a holdout without a split.
  write_npy(dir / "two.npy", "|u1", {2, 1, 1}, u, 2);
  expect_bad("--format npy --shards 3 --input " + (dir / "two.npy"), "3 shards", "at least one");
  expect_bad("--format npy --holdout 0.5 --input " + (dir / "two.npy"), "--holdout", "--split");
  expect_bad("--format images --input " + (dir / "nowhere"), "nowhere", "not a directory");
  // inspect and verify of something that is not a set.
  const RunResult v = h5shard("verify " + (dir / "nowhere"));
  EXPECT_EQ(v.exit_code, 2);
  EXPECT_TRUE(contains(v.output, "nowhere")) << v.output;
}

}  // namespace
}  // namespace difftrain::testing
