// Every kind of bad shard gives a one-line error naming the file, from the loader (data::Error at
// construction) and from `h5shard verify` (exit code 1), without a crash or a hang.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "data/loader.hpp"
#include "test_files.hpp"

namespace difftrain::data {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

class DataBadData : public ::testing::Test {
 protected:
  TempDir dir;
  testing::SyntheticSet set = testing::write_synthetic_set(dir / "set", {6, 5}, 4, 4, 1, 3);
  std::string shard = dir / "set/part1.h5";

  // Replaces part1.h5 with a raw shard of this shape (uint8 images, the manifest unchanged but
  // for the recorded size and checksum, so only the named defect remains).
  void replace_shard(const std::vector<int64_t>& shape, bool chunked = true) {
    int64_t n = 1;
    for (const int64_t d : shape)
      n *= d;
    const std::string crc = testing::write_raw_shard(
        shard, shape, std::vector<uint8_t>(static_cast<std::size_t>(n), 1),
        std::vector<int64_t>(static_cast<std::size_t>(shape.empty() ? 0 : shape[0]), 0), chunked);
    update_entry(static_cast<int64_t>(fs::file_size(shard)), crc);
  }
  void update_entry(int64_t bytes, const std::string& checksum) {
    auto j = nlohmann::json::parse(testing::read_text(set.manifest));
    j["shards"][1]["bytes"] = bytes;
    j["shards"][1]["checksum"] = checksum;
    testing::write_text(set.manifest, j.dump(2));
  }

  // Both readers reject the set with a message naming `file` and saying `what`.
  // verify exits 1 for bad shards, 2 when it cannot read the manifest at all.
  void expect_rejected(const std::string& file, const std::string& what, bool checksums = false,
                       int verify_exit = 1) {
    LoaderOptions o;
    o.manifest = dir / "set";
    o.global_batch = 4;
    o.labels = true;
    o.verify_checksums = checksums;
    try {
      Loader loader(o);
      FAIL() << "the loader accepted a set with: " << what;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(file), std::string::npos) << msg;
      EXPECT_NE(msg.find(what), std::string::npos) << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    }
    const testing::RunResult r = testing::h5shard("verify " + (dir / "set"));
    EXPECT_EQ(r.exit_code, verify_exit) << r.output;
    EXPECT_NE(r.output.find(file), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(what), std::string::npos) << r.output;
  }
};

TEST_F(DataBadData, GoodSetPasses) {
  LoaderOptions o;
  o.manifest = dir / "set";
  o.global_batch = 4;
  o.verify_checksums = true;
  EXPECT_NO_THROW(Loader{o}.next());
  EXPECT_EQ(testing::h5shard("verify " + (dir / "set")).exit_code, 0);
}

TEST_F(DataBadData, MissingShard) {
  fs::remove(shard);
  expect_rejected("part1.h5", "missing shard");
}

TEST_F(DataBadData, ChecksumMismatch) {
  testing::poke_row(shard, "images", 2, 255);  // same size, other bytes
  expect_rejected("part1.h5", "checksum mismatch", /*checksums=*/true);
}

TEST_F(DataBadData, TruncatedFile) {
  fs::resize_file(shard, fs::file_size(shard) / 2);
  expect_rejected("part1.h5", "truncated");
  // Without a recorded size HDF5 itself notices.
  update_entry(-1, "");
  auto j = nlohmann::json::parse(testing::read_text(set.manifest));
  j["shards"][1].erase("bytes");
  j["shards"][1].erase("checksum");
  testing::write_text(set.manifest, j.dump());
  expect_rejected("part1.h5", "HDF5");
}

TEST_F(DataBadData, NotHdf5) {
  testing::write_text(shard, std::string(4096, 'x'));
  update_entry(4096, "");
  auto j = nlohmann::json::parse(testing::read_text(set.manifest));
  j["shards"][1].erase("checksum");
  testing::write_text(set.manifest, j.dump());
  expect_rejected("part1.h5", "not an HDF5 file");
}

TEST_F(DataBadData, WrongDtype) {
  // float32 images, written with the C API.
  const hid_t f = H5Fcreate(shard.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  const hsize_t dims[4] = {5, 4, 4, 1};
  const hid_t space = H5Screate_simple(4, dims, nullptr);
  const hid_t ds =
      H5Dcreate2(f, "images", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dclose(ds);
  H5Sclose(space);
  H5Fclose(f);
  update_entry(static_cast<int64_t>(fs::file_size(shard)), "crc32:00000000");
  expect_rejected("part1.h5", "dtype float32, expected uint8");
}

TEST_F(DataBadData, WrongRank) {
  replace_shard({5, 4, 4});
  expect_rejected("part1.h5", "rank 3");
}

TEST_F(DataBadData, ShapeDiffersFromManifest) {
  replace_shard({5, 4, 3, 1});
  expect_rejected("part1.h5", "the manifest says [5, 4, 4, 1]");
}

TEST_F(DataBadData, SampleCountDiffersFromManifest) {
  replace_shard({4, 4, 4, 1});
  expect_rejected("part1.h5", "has shape [4, 4, 4, 1]");
}

TEST_F(DataBadData, EmptyShard) {
  replace_shard({0, 4, 4, 1}, /*chunked=*/false);
  expect_rejected("part1.h5", "empty");
}

TEST_F(DataBadData, LabelsOutOfRange) {
  const std::string crc = testing::write_raw_shard(shard, {5, 4, 4, 1}, std::vector<uint8_t>(80, 0),
                                                   std::vector<int64_t>{0, 1, 2, 3, 0});
  update_entry(static_cast<int64_t>(fs::file_size(shard)), crc);
  expect_rejected("part1.h5", "outside the manifest's 3 classes");
}

TEST_F(DataBadData, MissingLabels) {
  const std::string crc =
      testing::write_raw_shard(shard, {5, 4, 4, 1}, std::vector<uint8_t>(80, 0), {});
  update_entry(static_cast<int64_t>(fs::file_size(shard)), crc);
  expect_rejected("part1.h5", "missing dataset 'labels'");
}

TEST_F(DataBadData, BrokenManifest) {
  testing::write_text(set.manifest, "{\"format\": \"difftrain-shards\"");
  expect_rejected("manifest.json", "not valid JSON", false, 2);
  fs::remove(set.manifest);
  LoaderOptions o;
  o.manifest = dir / "set";
  o.global_batch = 4;
  EXPECT_THROW(Loader{o}, Error);
  EXPECT_EQ(testing::h5shard("verify " + (dir / "set")).exit_code, 2);
}

}  // namespace
}  // namespace difftrain::data
