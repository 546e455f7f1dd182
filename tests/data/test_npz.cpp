// NumPy files read by data/npz.hpp: what NumPy itself writes (np.savez, savez_compressed, .npy
// versions 1 and 2, in the project's .venv), what write_npz writes, and bad files refused naming
// the file and entry. h5shard converts an .npz as its arrays.
#include <gtest/gtest.h>

#include <cstdint>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "data/error.hpp"
#include "data/manifest.hpp"
#include "data/npz.hpp"
#include "test_files.hpp"

namespace difftrain::testing {
namespace {

// `python -c CODE` in the project's .venv, with numpy as np.
void numpy(const std::string& code) {
  const RunResult r =
      run(std::string(DIFFTRAIN_PYTHON) + " -c \"import numpy as np; " + code + "\"");
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

void expect_error(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << part << "'";
  } catch (const data::Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// Statistics files (pytorch-fid's mu and sigma) are float arrays: read when asked for numbers,
// refused where integers are expected.
TEST(DataNpz, ReadsFloatArraysOnlyWhenAskedForNumbers) {
  TempDir dir;
  numpy("np.savez_compressed('" + dir / "f.npz" +
        "', mu=np.array([0.5, -1.25]), sigma=np.array([[1, 0.5], [0.5, 2]], np.float32))");
  expect_error([&] { data::read_npz(dir / "f.npz"); }, "f.npz:mu: dtype '<f8' is not an integer");
  const std::vector<data::NpyData> arrays = data::read_npz(dir / "f.npz", data::NpyKinds::numbers);
  ASSERT_EQ(arrays.size(), 2u);
  EXPECT_EQ(arrays[0].name, "mu");
  EXPECT_EQ(arrays[0].descr, "f8");
  EXPECT_EQ(data::double_values(arrays[0]), (std::vector<double>{0.5, -1.25}));
  EXPECT_EQ(arrays[1].descr, "f4");
  EXPECT_EQ(arrays[1].shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(data::double_values(arrays[1]), (std::vector<double>{1, 0.5, 0.5, 2}));
  expect_error([&] { data::int64_values(arrays[0]); }, "holds floats (f8), not integers");
}

// guided-diffusion's image_sample.py ends with np.savez(out_path, arr, label_arr): uint8 NHWC
// images as arr_0, int64 labels as arr_1. Compressed too, and a version 2 .npy.
TEST(DataNpz, ReadsWhatNumpyWrites) {
  TempDir dir;
  numpy(
      "x = (np.arange(2 * 3 * 4 * 3) % 251).astype(np.uint8).reshape(2, 3, 4, 3); "
      "y = np.array([7, -2]); "
      "np.savez('" +
      dir / "s.npz" +
      "', x, y); "
      "np.savez_compressed('" +
      dir / "c.npz" +
      "', x, labels=y.astype(np.int32)); "
      "np.lib.format.write_array(open('" +
      dir / "v2.npy" +
      "', 'wb'), y.astype(np.uint16), "
      "version=(2, 0))");
  for (const std::string file : {"s.npz", "c.npz"}) {
    SCOPED_TRACE(file);
    const std::vector<data::NpyData> arrays = data::read_npz(dir / file);
    ASSERT_EQ(arrays.size(), 2u);
    const auto named = [&](const std::string& name) {
      for (const auto& a : arrays)
        if (a.name == name) return a;
      ADD_FAILURE() << "no " << name;
      return data::NpyData{};
    };
    const data::NpyData x = named("arr_0");
    EXPECT_EQ(x.descr, "u1");
    EXPECT_EQ(x.shape, (std::vector<int64_t>{2, 3, 4, 3}));
    ASSERT_EQ(x.data.size(), 72u);
    for (std::size_t i = 0; i < 72; ++i)
      ASSERT_EQ(x.data[i], i % 251) << i;
    const data::NpyData y = named(file == "s.npz" ? "arr_1" : "labels");
    EXPECT_EQ(y.descr, file == "s.npz" ? "i8" : "i4");
    EXPECT_EQ(data::int64_values(y), (std::vector<int64_t>{7, -2}));
    EXPECT_EQ(y.where, dir / file + ":" + y.name);
  }
  const data::NpyData v2 = data::read_npy(dir / "v2.npy");
  EXPECT_EQ(v2.descr, "u2");
  EXPECT_EQ(data::int64_values(v2), (std::vector<int64_t>{7, 65534}));
}

TEST(DataNpz, ReadsBackWhatWriteNpzWrites) {
  TempDir dir;
  const std::vector<uint8_t> pixels{1, 2, 3, 4, 5, 6};
  const std::vector<int64_t> labels{3, 0};
  data::write_npz(dir / "w.npz", {{"arr_0", "|u1", pixels.data(), 1, {2, 3, 1, 1}},
                                  {"arr_1", "<i8", labels.data(), 8, {2}}});
  const auto arrays = data::read_npz(dir / "w.npz");
  ASSERT_EQ(arrays.size(), 2u);
  EXPECT_EQ(arrays[0].data, pixels);
  EXPECT_EQ(arrays[0].shape, (std::vector<int64_t>{2, 3, 1, 1}));
  EXPECT_EQ(data::int64_values(arrays[1]), labels);
}

TEST(DataNpz, BadFilesNameTheFileAndEntry) {
  TempDir dir;
  numpy("np.savez('" + dir / "f.npz" +
        "', np.zeros(3, np.uint8), np.zeros(2, np.float32)); "
        "np.save('" +
        dir / "fortran.npy" +
        "', np.asfortranarray(np.zeros((2, 3), np.uint8))); "
        "np.save('" +
        dir / "big.npy" + "', np.zeros(2, '>i4'))");
  expect_error([&] { data::read_npz(dir / "f.npz"); }, dir / "f.npz:arr_1: dtype '<f4'");
  expect_error([&] { data::read_npy(dir / "fortran.npy"); }, "Fortran-order");
  expect_error([&] { data::read_npy(dir / "big.npy"); }, "big-endian");
  std::ofstream(dir / "text.npz") << "not a zip";
  expect_error([&] { data::read_npz(dir / "text.npz"); }, dir / "text.npz: cannot open as .npz");
  expect_error([&] { data::read_npy(dir / "missing.npy"); }, "no such file");
  numpy("import os; np.save('" + dir / "t.npy" +
        "', np.zeros(4, np.uint8)); "
        "os.truncate('" +
        dir / "t.npy" + "', os.path.getsize('" + dir / "t.npy" + "') - 2)");
  expect_error([&] { data::read_npy(dir / "t.npy"); }, "t.npy: holds 2 data bytes");
  std::ofstream(dir / "m.npy") << "not numpy at all";
  expect_error([&] { data::read_npy(dir / "m.npy"); }, "m.npy: not a .npy file");
}

// h5shard converts numpy.savez's arrays as it converts the same arrays in .npy files.
TEST(DataNpz, H5shardConvertsAnNpzAsItsArrays) {
  TempDir dir;
  numpy(
      "x = (np.arange(6 * 4 * 4) % 200).astype(np.uint8).reshape(6, 4, 4); "
      "y = np.arange(6) % 3; np.save('" +
      dir / "x.npy" + "', x); np.save('" + dir / "y.npy" + "', y); np.savez_compressed('" +
      dir / "xy.npz" + "', x, y)");
  ASSERT_EQ(h5shard("convert --format npy --input " + dir / "x.npy" + " " + dir / "y.npy" +
                    " --out " + dir / "from_npy")
                .exit_code,
            0);
  const RunResult r =
      h5shard("convert --format npy --input " + dir / "xy.npz" + " --out " + dir / "from_npz");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string from_npz = data::read_manifest(dir / "from_npz").shard_path(0),
                    from_npy = data::read_manifest(dir / "from_npy").shard_path(0);
  EXPECT_EQ(read_raw_uint8(from_npz, "images"), read_raw_uint8(from_npy, "images"));
  EXPECT_EQ(read_raw_int64(from_npz, "labels"), read_raw_int64(from_npy, "labels"));
  const RunResult floats = run(std::string(DIFFTRAIN_PYTHON) +
                               " -c \"import numpy as np; "
                               "np.savez('" +
                               dir / "f.npz" + "', np.zeros((2, 2, 2), np.float32))\"");
  ASSERT_EQ(floats.exit_code, 0);
  const RunResult bad =
      h5shard("convert --format npy --input " + dir / "f.npz" + " --out " + dir / "bad");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("f.npz:arr_0: dtype '<f4' is not an integer type"), std::string::npos)
      << bad.output;
}

}  // namespace
}  // namespace difftrain::testing
