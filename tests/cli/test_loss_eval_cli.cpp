// `difftrain loss-eval` as a user runs it: outputs written and read back, and every bad-input
// path answered by a one-line error naming the file, with exit code 2 (1 for a failed --check).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "common/difftrain_cli.hpp"
#include "data/h5_tensor.hpp"

namespace fs = std::filesystem;
namespace h5 = difftrain::h5;

namespace {

const std::string kGolden = DIFFTRAIN_GOLDEN_DIR;
const std::string kPerSample = kGolden + "/loss_linear_T1000_epsilon_learned_range_mse.h5";

using difftrain::testing::difftrain_cli;
using difftrain::testing::ProcessResult;

fs::path scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / "difftrain_test_cli";
  fs::create_directories(dir);
  return dir / name;
}

// A copy of the per-sample golden file with `edit` applied to its contents before writing.
struct CaseFile {
  std::map<std::string, at::Tensor> datasets;
  std::map<std::string, std::string> string_attrs;
  std::map<std::string, int64_t> int_attrs;
};

fs::path write_case(const std::string& name, const std::function<void(CaseFile&)>& edit) {
  const h5::File src = h5::File::open(kPerSample);
  CaseFile c;
  for (const char* ds : {"x_start", "noise", "model_output"})
    c.datasets[ds] = h5::read_tensor(src, ds, at::kFloat);
  c.datasets["t"] = h5::read_tensor(src, "t", at::kLong);
  for (const char* ds : {"expected_mse", "expected_vb", "expected_loss"})
    c.datasets[ds] = h5::read_tensor(src, ds, at::kDouble);
  for (const char* a : {"schedule", "model_mean_type", "model_var_type", "loss_type"})
    c.string_attrs[a] = src.attr_string(a);
  c.int_attrs["steps"] = src.attr_int("steps");
  edit(c);
  const fs::path path = scratch(name);
  h5::File f = h5::File::create(path);
  for (const auto& [k, v] : c.datasets)
    h5::write_tensor(f, k, v);
  for (const auto& [k, v] : c.string_attrs)
    f.set_attr(k, v);
  for (const auto& [k, v] : c.int_attrs)
    f.set_attr(k, v);
  return path;
}

void expect_bad_input(const fs::path& file, const std::string& message) {
  const ProcessResult r = difftrain_cli("loss-eval --cases " + file.string() + " --check");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(file.string()), std::string::npos) << "file not named: " << r.output;
  EXPECT_NE(r.output.find(message), std::string::npos)
      << "expected '" << message << "' in " << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
}

TEST(LossEvalCli, WritesOutputsThatReadBack) {
  const fs::path out = scratch("out.h5");
  fs::remove(out);
  const ProcessResult r =
      difftrain_cli("loss-eval --cases " + kPerSample + " --out " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const h5::File f = h5::File::open(out);
  const h5::File golden = h5::File::open(kPerSample);
  for (const char* name : {"mse", "vb", "loss"}) {
    const at::Tensor got = h5::read_tensor(f, name, at::kDouble);
    EXPECT_EQ(f.dtype(name), "float64");
    EXPECT_TRUE(at::allclose(
        got, h5::read_tensor(golden, std::string("expected_") + name, at::kDouble), 1e-7, 1e-9))
        << name;
  }
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

TEST(LossEvalCli, FullBoundFileWritesEveryTerm) {
  const fs::path out = scratch("bpd_out.h5");
  const ProcessResult r =
      difftrain_cli("loss-eval --dtype float32 --cases " + kGolden +
                    "/bpd_linear_T50_epsilon_learned_range_zeros.h5 --out " + out.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const h5::File f = h5::File::open(out);
  EXPECT_EQ(f.shape("vb"), (std::vector<int64_t>{2, 50}));
  EXPECT_EQ(f.shape("total_bpd"), (std::vector<int64_t>{2}));
  for (const char* name : {"mse", "xstart_mse", "prior_bpd"})
    EXPECT_TRUE(f.has(name)) << name;
}

TEST(LossEvalCli, FailedCheckExitsOne) {
  const auto file =
      write_case("tampered.h5", [](CaseFile& c) { c.datasets["expected_loss"][2] += 0.01; });
  const ProcessResult r = difftrain_cli("loss-eval --cases " + file.string() + " --check");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("FAIL"), std::string::npos) << r.output;
}

TEST(LossEvalCli, MissingFile) {
  expect_bad_input(scratch("does_not_exist.h5"), "no such file");
}

TEST(LossEvalCli, NotHdf5) {
  const fs::path p = scratch("text.h5");
  std::ofstream(p) << "not hdf5\n";
  expect_bad_input(p, "not an HDF5 file");
}

TEST(LossEvalCli, TruncatedFile) {
  const fs::path p = scratch("truncated.h5");
  fs::copy_file(kPerSample, p, fs::copy_options::overwrite_existing);
  fs::resize_file(p, fs::file_size(p) / 2);
  const ProcessResult r = difftrain_cli("loss-eval --cases " + p.string());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(p.string()), std::string::npos) << r.output;
}

TEST(LossEvalCli, NeitherLayout) {
  expect_bad_input(write_case("no_noise.h5", [](CaseFile& c) { c.datasets.erase("noise"); }),
                   "not a loss-eval case file");
}

TEST(LossEvalCli, MissingDataset) {
  expect_bad_input(write_case("no_t.h5", [](CaseFile& c) { c.datasets.erase("t"); }),
                   "missing dataset 't'");
  expect_bad_input(
      write_case("no_output.h5", [](CaseFile& c) { c.datasets.erase("model_output"); }),
      "missing dataset 'model_output'");
}

TEST(LossEvalCli, WrongShape) {
  expect_bad_input(write_case("one_head.h5",
                              [](CaseFile& c) {
                                c.datasets["model_output"] =
                                    c.datasets["model_output"].slice(1, 0, 3).contiguous();
                              }),
                   "dataset 'model_output' has shape [8, 3, 4, 4], expected [8, 6, 4, 4]");
  expect_bad_input(write_case("short_t.h5",
                              [](CaseFile& c) {
                                c.datasets["t"] = c.datasets["t"].slice(0, 0, 5).contiguous();
                              }),
                   "dataset 't' has shape [5], expected [8]");
}

TEST(LossEvalCli, UnknownStrings) {
  expect_bad_input(
      write_case("quadratic.h5", [](CaseFile& c) { c.string_attrs["schedule"] = "quadratic"; }),
      "unknown schedule 'quadratic'");
  expect_bad_input(
      write_case("vtype.h5", [](CaseFile& c) { c.string_attrs["model_var_type"] = "learnt"; }),
      "unknown model_var_type 'learnt'");
  expect_bad_input(write_case("ltype.h5", [](CaseFile& c) { c.string_attrs["loss_type"] = "l1"; }),
                   "unknown loss_type 'l1'");
  expect_bad_input(
      write_case("no_schedule.h5", [](CaseFile& c) { c.string_attrs.erase("schedule"); }),
      "missing attribute 'schedule'");
}

TEST(LossEvalCli, StepsOutOfRange) {
  expect_bad_input(write_case("t20.h5", [](CaseFile& c) { c.int_attrs["steps"] = 20; }), "T = 20");
  expect_bad_input(write_case("t_big.h5",
                              [](CaseFile& c) {
                                c.int_attrs["steps"] = 100;
                                c.datasets["t"][0] = 100;
                              }),
                   "dataset 't' has values outside [0, 99]");
}

}  // namespace
