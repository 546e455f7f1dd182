// `difftrain sample` and `difftrain eval` as a user runs them, on a tiny checkpoint written here:
// outputs read back with independent readers (libpng, libzip, the data room's shard reader),
// results that do not depend on the batch size or the number of ranks, and bad input answered by
// a one-line error naming the file, exit code 2.
#include <gtest/gtest.h>
#include <png.h>
#include <unistd.h>
#include <zip.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/difftrain_cli.hpp"
#include "data/h5.hpp"
#include "data/npz.hpp"
#include "data/shard_reader.hpp"
#include "data/shard_set.hpp"
#include "tiny_run.hpp"

namespace fs = std::filesystem;
using difftrain::testing::difftrain_cli;
using difftrain::testing::difftrain_mpi;
using difftrain::testing::ProcessResult;

namespace {

struct Png {
  int64_t width = 0, height = 0, channels = 0;
};
Png read_png_header(const std::string& path) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) return {};
  Png p{image.width, image.height, PNG_IMAGE_SAMPLE_CHANNELS(image.format)};
  png_image_free(&image);
  return p;
}

// The pixels of a PNG as RGB rows.
std::vector<uint8_t> read_png_rgb(const std::string& path, Png& size) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) return {};
  image.format = PNG_FORMAT_RGB;
  std::vector<uint8_t> rgb(PNG_IMAGE_SIZE(image));
  png_image_finish_read(&image, nullptr, rgb.data(), 0, nullptr);
  size = {image.width, image.height, 3};
  return rgb;
}

// One array of an .npz, read with libzip; the .npy header parsed by hand.
struct Npy {
  std::string descr;
  std::vector<int64_t> shape;
  std::string data;
};
Npy read_npz(const std::string& path, const std::string& name) {
  int error = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_RDONLY, &error);
  if (!z) throw std::runtime_error(path + ": not a zip");
  zip_stat_t st;
  if (zip_stat(z, (name + ".npy").c_str(), 0, &st) != 0) {
    zip_close(z);
    throw std::runtime_error(path + ": no " + name);
  }
  std::string bytes(st.size, '\0');
  zip_file_t* f = zip_fopen(z, (name + ".npy").c_str(), 0);
  zip_fread(f, bytes.data(), st.size);
  zip_fclose(f);
  zip_close(z);
  if (bytes.compare(0, 6, "\x93NUMPY") != 0) throw std::runtime_error("not .npy");
  const std::size_t header_len = static_cast<uint8_t>(bytes[8]) | static_cast<uint8_t>(bytes[9])
                                                                      << 8;
  const std::string header = bytes.substr(10, header_len);
  if ((10 + header_len) % 64 != 0) throw std::runtime_error("header not aligned");
  Npy npy;
  const auto descr = header.find("'descr': '") + 10;
  npy.descr = header.substr(descr, header.find('\'', descr) - descr);
  auto pos = header.find("'shape': (") + 10;
  const auto end = header.find(')', pos);
  while (pos < end) {
    std::size_t used = 0;
    npy.shape.push_back(std::stoll(header.substr(pos), &used));
    pos = header.find_first_not_of(", ", pos + used);
  }
  npy.data = bytes.substr(10 + header_len);
  return npy;
}

int max_abs_diff(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return 256;
  int worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<uint8_t>(a[i]) - static_cast<uint8_t>(b[i])));
  return worst;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

class SampleEvalCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("difftrain_test_sample_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // 6x6 gray images, padded to 8 for the UNet; a held-out set of the same kind.
    train_ = difftrain::testing::write_tiny_set(path("train"), 8, 6, 6, 1, 0);
    heldout_ = difftrain::testing::write_tiny_set(path("heldout"), 5, 6, 6, 1, 0, 2);
    run_ = path("run");
    checkpoint_ = run_ + "/checkpoints/ckpt_000000100.pt";
    const std::string yaml = difftrain::testing::tiny_config_yaml(train_);
    difftrain::testing::write_tiny_checkpoint(checkpoint_, yaml, yaml);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  // `sample --checkpoint CHECKPOINT --num 3 ARGS --out NAME`: the images of NAME.npz.
  Npy sample_npz(const std::string& args, const std::string& name) {
    const ProcessResult r = difftrain_cli("sample --checkpoint " + checkpoint_ + " --num 3 " +
                                          args + " --out " + path(name));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return read_npz(path(name + ".npz"), "arr_0");
  }
  // `sample SAMPLE` and `eval EVAL` on 1 rank and on 2: the same samples (within one grey
  // level) and the same bound; returns the two eval reports.
  std::pair<nlohmann::json, nlohmann::json> one_and_two_ranks(const std::string& sample,
                                                              const std::string& eval,
                                                              const std::string& tag) {
    const std::string one = path(tag + "_one"), two = path(tag + "_two");
    EXPECT_EQ(difftrain_cli("sample --run " + run_ + sample + " --out " + one).exit_code, 0);
    ProcessResult r = difftrain_mpi(2, "sample --run " + run_ + sample + " --out " + two);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_LE(
        max_abs_diff(read_npz(one + ".npz", "arr_0").data, read_npz(two + ".npz", "arr_0").data),
        1);
    const std::string data = " --data " + heldout_;
    EXPECT_EQ(difftrain_cli("eval --run " + run_ + data + eval + " --out " + one + "_e").exit_code,
              0);
    r = difftrain_mpi(2, "eval --run " + run_ + data + eval + " --out " + two + "_e");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    nlohmann::json j1 = read_json(one + "_e.json"), j2 = read_json(two + "_e.json");
    EXPECT_NEAR(j1["total_bpd"].get<double>(), j2["total_bpd"].get<double>(), 1e-5);
    return {j1, j2};
  }

  fs::path dir_;
  std::string train_, heldout_, run_, checkpoint_;
};

TEST_F(SampleEvalCli, SampleWritesGridShardAndNpz) {
  const ProcessResult r =
      difftrain_cli("sample --run " + run_ + " --num 5 --batch 2 --sampler ddim --steps 5 --out " +
                    path("out/s"));
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // The samples are cropped back from the padded 8x8 to the data's 6x6.
  const Png png = read_png_header(path("out/s.png"));
  EXPECT_EQ(png.channels, 1);
  EXPECT_EQ(png.width, 3 * (6 + 2) + 2);  // 3 columns with 2 px gaps
  EXPECT_EQ(png.height, 2 * (6 + 2) + 2);

  const Npy arr = read_npz(path("out/s.npz"), "arr_0");
  EXPECT_EQ(arr.descr, "|u1");
  EXPECT_EQ(arr.shape, (std::vector<int64_t>{5, 6, 6, 1}));
  EXPECT_THROW(read_npz(path("out/s.npz"), "arr_1"), std::runtime_error) << "unconditional";

  // The shard, as the data room reads a lone shard: a one-entry manifest.
  difftrain::data::Manifest m;
  m.path = path("out/(no manifest)");
  m.height = 6;
  m.width = 6;
  m.channels = 1;
  m.shards.push_back({"s.h5", 5, -1, ""});
  difftrain::data::open_shard(m, 0);
  difftrain::data::ShardSet shards(m);
  std::string pixels(5 * 36, '\0');
  shards.read_range(0, 5, reinterpret_cast<uint8_t*>(pixels.data()));
  EXPECT_EQ(pixels, arr.data) << "the .h5 and the .npz hold the same images";
  const auto h5 = difftrain::h5::File::open(path("out/s.h5"));
  EXPECT_NE(h5.attr_string("source").find("ddim"), std::string::npos);
}

// Ancestral sampling draws its noise, and DPM-Solver++ its x_T, from each sample's own generator:
// the images depend on the seed, not on the batch.
TEST_F(SampleEvalCli, SamplesDoNotDependOnTheBatchSize) {
  for (const std::string sampler : {"--respacing 8", "--sampler dpm++2m"}) {
    SCOPED_TRACE(sampler);
    const Npy a = sample_npz(sampler + " --seed 4 --batch 1", "b1");
    EXPECT_LE(max_abs_diff(a.data, sample_npz(sampler + " --seed 4 --batch 3", "b3").data), 1);
    // Another seed gives other images.
    EXPECT_GT(max_abs_diff(a.data, sample_npz(sampler + " --seed 5", "c").data), 8);
  }
}

// DPM-Solver++ takes 20 steps unless told otherwise, and the shard records it; its second-order
// steps move the images away from DDIM's.
TEST_F(SampleEvalCli, DpmSolverTakes20StepsByDefault) {
  const Npy dpm = sample_npz("--sampler dpm++2m --seed 4", "dpm");
  const nlohmann::json source =
      nlohmann::json::parse(difftrain::h5::File::open(path("dpm.h5")).attr_string("source"));
  EXPECT_EQ(source["sampler"], "dpm++2m");
  EXPECT_NE(source["schedule"].get<std::string>().find("20 of 40 steps"), std::string::npos)
      << source.dump();
  EXPECT_GT(max_abs_diff(dpm.data, sample_npz("--sampler ddim --steps 20 --seed 4", "ddim").data),
            0);
}

TEST_F(SampleEvalCli, EmaChoiceSelectsTheWeights) {
  ASSERT_EQ(
      difftrain_cli("sample --run " + run_ + " --num 2 --steps 4 --out " + path("ema")).exit_code,
      0);
  ASSERT_EQ(
      difftrain_cli("sample --run " + run_ + " --num 2 --steps 4 --ema 0.9 --out " + path("ema9"))
          .exit_code,
      0);
  ASSERT_EQ(
      difftrain_cli("sample --run " + run_ + " --num 2 --steps 4 --ema none --out " + path("raw"))
          .exit_code,
      0);
  const std::string ema = read_npz(path("ema.npz"), "arr_0").data;
  EXPECT_EQ(ema, read_npz(path("ema9.npz"), "arr_0").data) << "the first EMA rate is the default";
  EXPECT_NE(ema, read_npz(path("raw.npz"), "arr_0").data);
  const ProcessResult r =
      difftrain_cli("sample --run " + run_ + " --num 2 --ema 0.5 --out " + path("x"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("no EMA with rate 0.5"), std::string::npos) << r.output;
}

TEST_F(SampleEvalCli, ClassConditionalSamplesCarryTheirLabels) {
  const std::string labeled = difftrain::testing::write_tiny_set(path("labeled"), 6, 8, 8, 3, 3);
  const std::string yaml = difftrain::testing::tiny_config_yaml(labeled, 0, true);
  const std::string ckpt = path("cond.pt");
  difftrain::testing::write_tiny_checkpoint(ckpt, yaml, yaml);

  ProcessResult r =
      difftrain_cli("sample --checkpoint " + ckpt + " --num 5 --steps 3 --out " + path("rr"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Npy labels = read_npz(path("rr.npz"), "arr_1");
  EXPECT_EQ(labels.descr, "<i8");
  EXPECT_EQ(labels.shape, (std::vector<int64_t>{5}));
  std::vector<int64_t> got(5);
  std::memcpy(got.data(), labels.data.data(), 40);
  EXPECT_EQ(got, (std::vector<int64_t>{0, 1, 2, 0, 1})) << "every class in turn";
  EXPECT_EQ(read_npz(path("rr.npz"), "arr_0").shape, (std::vector<int64_t>{5, 8, 8, 3}));
  EXPECT_EQ(read_png_header(path("rr.png")).channels, 3);

  r = difftrain_cli("sample --checkpoint " + ckpt + " --num 4 --steps 3 --class 2 --out " +
                    path("c2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(difftrain::h5::File::open(path("c2.h5")).read<int64_t>("labels"),
            (std::vector<int64_t>{2, 2, 2, 2}));

  r = difftrain_cli("sample --checkpoint " + ckpt + " --num 4 --class 3 --out " + path("c3"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--class 3 is outside [0, 3)"), std::string::npos) << r.output;
}

TEST_F(SampleEvalCli, EvalWritesTheReport) {
  const ProcessResult r = difftrain_cli("eval --run " + run_ + " --data " + heldout_ +
                                        " --num 3 --batch 2 --out " + path("bpd.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("bits/dim"), std::string::npos) << r.output;
  const nlohmann::json j = read_json(path("bpd.json"));
  EXPECT_EQ(j["num_images"], 3);
  EXPECT_EQ(j["step"], 100);
  EXPECT_EQ(j["ema_rate"], 0.9);
  const auto vb = j["per_timestep"]["vb_bpd"].get<std::vector<double>>();
  ASSERT_EQ(vb.size(), 40u);
  ASSERT_EQ(j["per_timestep"]["mse"].size(), 40u);
  ASSERT_EQ(j["per_timestep"]["xstart_mse"].size(), 40u);
  EXPECT_EQ(j["per_timestep"]["t"][39], 39);
  double sum = j["prior_bpd"].get<double>();
  for (const double v : vb)
    sum += v;
  EXPECT_NEAR(j["total_bpd"].get<double>(), sum, 1e-5);  // per-image totals in float32
  EXPECT_DOUBLE_EQ(j["decoder_bpd"].get<double>(), vb[0]);
  EXPECT_GT(j["total_bpd"].get<double>(), 0);
  EXPECT_GT(j["total_bpd_stderr"].get<double>(), 0);

  // A padded model (6x6 gray images on an 8x8 canvas): the bound also per real pixel dim, which
  // is the per-padded-dim bound times 64 / 36, and both are named on the console.
  EXPECT_EQ(j["dims"], 64);
  EXPECT_EQ(j["real_dims"], 36);
  EXPECT_NEAR(j["total_bpd_real_pixels"].get<double>(), j["total_bpd"].get<double>() * 64 / 36,
              1e-9);
  EXPECT_NEAR(j["total_bpd_real_pixels_stderr"].get<double>(),
              j["total_bpd_stderr"].get<double>() * 64 / 36, 1e-9);
  EXPECT_NE(r.output.find("bits/dim, real pixels"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("bits/dim, padded"), std::string::npos) << r.output;
  // Each image's total, in the order of the chosen indices: their mean is the report's total.
  const auto per_image = j["per_image"]["total_bpd"].get<std::vector<double>>();
  ASSERT_EQ(per_image.size(), 3u);
  ASSERT_EQ(j["per_image"]["index"].size(), 3u);
  EXPECT_NEAR((per_image[0] + per_image[1] + per_image[2]) / 3, j["total_bpd"].get<double>(), 1e-6);

  std::ifstream csv(path("bpd.csv"));
  std::string line;
  int lines = 0;
  while (std::getline(csv, line))
    ++lines;
  EXPECT_EQ(lines, 41);
  const Png plot = read_png_header(path("bpd.png"));
  EXPECT_EQ(plot.width, 800);
  EXPECT_EQ(plot.height, 480);

  // The same images and noise in other batches: the same bound.
  ASSERT_EQ(difftrain_cli("eval --checkpoint " + checkpoint_ + " --data " + heldout_ +
                          " --num 3 --batch 3 --out " + path("bpd3"))
                .exit_code,
            0);
  EXPECT_NEAR(read_json(path("bpd3.json"))["total_bpd"].get<double>(), j["total_bpd"].get<double>(),
              1e-5);
}

TEST_F(SampleEvalCli, EvalDefaultReportGoesToTheRunDirectory) {
  const ProcessResult r = difftrain_cli("eval --run " + run_ + " --data " + heldout_ + " --num 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(run_ + "/eval/bpd_step100.json")) << r.output;
  EXPECT_TRUE(read_json(run_ + "/eval/bpd_step100.json")["total_bpd_stderr"].is_null());
}

TEST_F(SampleEvalCli, TwoRanksGiveWhatOneRankGives) {
  const auto [one, two] = one_and_two_ranks(
      " --num 5 --respacing 6 --sampler ddim --eta 1 --batch 2", " --batch 2", "five");
  EXPECT_EQ(two["num_images"], 5);
  EXPECT_EQ(two["ranks"], 2);
  EXPECT_NEAR(one["total_bpd_stderr"].get<double>(), two["total_bpd_stderr"].get<double>(), 1e-5);
  // Each rank fills in its own images' totals: together, one rank's list.
  EXPECT_EQ(one["per_image"]["index"], two["per_image"]["index"]);
  const auto t1 = one["per_image"]["total_bpd"].get<std::vector<double>>();
  const auto t2 = two["per_image"]["total_bpd"].get<std::vector<double>>();
  ASSERT_EQ(t1.size(), 5u);
  ASSERT_EQ(t2.size(), 5u);
  for (std::size_t i = 0; i < t1.size(); ++i)
    EXPECT_NEAR(t1[i], t2[i], 1e-5) << "image " << i;
}

// Fewer images than ranks: the rank past them has nothing to do.
TEST_F(SampleEvalCli, FewerImagesThanRanks) {
  const auto [one, two] =
      one_and_two_ranks(" --num 1 --respacing 4 --sampler ddim --eta 1", " --num 1", "one");
  EXPECT_EQ(two["num_images"], 1);
}

// Bad input: exit code 2 and one error line that names the culprit.
void expect_bad_input(const ProcessResult& r, const std::string& culprit,
                      const std::string& message) {
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(culprit), std::string::npos) << "not named: " << r.output;
  EXPECT_NE(r.output.find(message), std::string::npos)
      << "expected '" << message << "' in " << r.output;
  int errors = 0;
  for (std::size_t p = r.output.find("error"); p != std::string::npos;
       p = r.output.find("error", p + 1))
    ++errors;
  EXPECT_EQ(errors, 1) << r.output;
  EXPECT_EQ(r.output.find("Abort"), std::string::npos) << r.output;
}

TEST_F(SampleEvalCli, MissingRunDirectory) {
  const std::string missing = path("no_such_run");
  expect_bad_input(difftrain_cli("sample --run " + missing + " --num 1 --out " + path("x")),
                   missing, "no such run directory");
  expect_bad_input(difftrain_cli("eval --run " + missing + " --data " + heldout_), missing,
                   "no such run directory");
  fs::create_directories(path("empty_run"));
  expect_bad_input(
      difftrain_cli("sample --run " + path("empty_run") + " --num 1 --out " + path("x")),
      path("empty_run"), "no valid checkpoint");
}

TEST_F(SampleEvalCli, CheckpointOfAnotherConfig) {
  // Weights of a 64-channel model under a config that says 32 channels.
  const std::string ckpt = path("other.pt");
  difftrain::testing::write_tiny_checkpoint(
      ckpt, difftrain::testing::tiny_config_yaml(train_, 8, false, 64),
      difftrain::testing::tiny_config_yaml(train_, 8, false, 32));
  expect_bad_input(difftrain_cli("sample --checkpoint " + ckpt + " --num 1 --out " + path("x")),
                   ckpt, "has shape");
  expect_bad_input(difftrain_cli("eval --checkpoint " + ckpt + " --data " + heldout_), ckpt,
                   "has shape");
}

TEST_F(SampleEvalCli, CheckpointOfALargerModelIsRefused) {
  // Two res blocks per level in the weights, one in the stored config: every tensor the smaller
  // model needs is there with its shape, so only the extra ones give it away.
  std::string two_blocks = difftrain::testing::tiny_config_yaml(train_);
  two_blocks.replace(two_blocks.find("num_res_blocks: 1"), 17, "num_res_blocks: 2");
  const std::string ckpt = path("larger.pt");
  difftrain::testing::write_tiny_checkpoint(ckpt, two_blocks,
                                            difftrain::testing::tiny_config_yaml(train_));
  expect_bad_input(difftrain_cli("sample --checkpoint " + ckpt + " --num 1 --out " + path("x")),
                   ckpt, "another architecture");
  expect_bad_input(
      difftrain_cli("sample --checkpoint " + ckpt + " --ema none --num 1 --out " + path("x")), ckpt,
      "another architecture");
}

TEST_F(SampleEvalCli, StoredConfigFromANewerVersionLoadsWithAWarning) {
  const std::string yaml = difftrain::testing::tiny_config_yaml(train_);
  const std::string ckpt = path("newer.pt");
  difftrain::testing::write_tiny_checkpoint(ckpt, yaml,
                                            yaml + "  a_future_key: 3\nfuture_section: {x: 1}\n");
  const ProcessResult r =
      difftrain_cli("sample --checkpoint " + ckpt + " --num 1 --steps 2 --out " + path("x"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("ignoring the key 'logging.a_future_key'"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("ignoring the key 'future_section'"), std::string::npos) << r.output;
}

TEST_F(SampleEvalCli, HeldOutSetOfAnotherShape) {
  const std::string big = difftrain::testing::write_tiny_set(path("big"), 2, 16, 16, 1, 0);
  expect_bad_input(difftrain_cli("eval --run " + run_ + " --data " + big), big,
                   "images are 1x16x16 (CxHxW) but the model");
  const std::string rgb = difftrain::testing::write_tiny_set(path("rgb"), 2, 6, 6, 3, 0);
  expect_bad_input(difftrain_cli("eval --run " + run_ + " --data " + rgb), rgb, "images are 3x6x6");
  const std::string missing = path("nothing/manifest.json");
  expect_bad_input(difftrain_cli("eval --run " + run_ + " --data " + missing), missing,
                   "cannot open the manifest");
}

TEST_F(SampleEvalCli, UnwritableOutput) {
  // /proc refuses new files even to root, whom permission bits do not stop.
  expect_bad_input(difftrain_cli("sample --run " + run_ + " --num 1 --out /proc/s"), "/proc/s",
                   "cannot write to the directory /proc");
  expect_bad_input(
      difftrain_cli("eval --run " + run_ + " --data " + heldout_ + " --out /proc/bpd.json"),
      "/proc/bpd.json", "cannot write to the directory /proc");
}

// Classifier-free guidance from the command line: a model trained with training.p_uncond has the
// null label; scale 1 is the conditional model, other scales give other images, the same for any
// batch size and on 2 ranks; a model without the null label refuses a scale.
TEST_F(SampleEvalCli, GuidanceScaleSamplesAModelTrainedWithTheNullLabel) {
  const std::string labeled = difftrain::testing::write_tiny_set(path("labeled"), 6, 8, 8, 3, 3);
  std::string yaml = difftrain::testing::tiny_config_yaml(labeled, 0, true);
  const std::string conditional_only = yaml;
  const std::string ema = "  ema_rates: [0.9]\n";
  yaml.insert(yaml.find(ema) + ema.size(), "  p_uncond: 0.2\n");
  const std::string ckpt = path("cfg.pt");
  difftrain::testing::write_tiny_checkpoint(ckpt, yaml, yaml);
  const auto sample = [&](const std::string& args, const std::string& out) {
    return difftrain_cli("sample --checkpoint " + ckpt + " --num 4 --steps 4 --seed 3 " + args +
                         " --out " + path(out));
  };
  ASSERT_EQ(sample("", "plain").exit_code, 0);
  ProcessResult r = sample("--guidance-scale 1", "s1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string plain = read_npz(path("plain.npz"), "arr_0").data;
  EXPECT_EQ(read_npz(path("s1.npz"), "arr_0").data, plain) << "scale 1 is the conditional model";
  r = sample("--guidance-scale 3 --batch 1", "s3_b1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("guidance scale 3"), std::string::npos) << r.output;
  ASSERT_EQ(sample("--guidance-scale 3 --batch 4", "s3_b4").exit_code, 0);
  ASSERT_EQ(sample("--guidance-scale 0", "s0").exit_code, 0);
  const std::string guided = read_npz(path("s3_b1.npz"), "arr_0").data;
  EXPECT_LE(max_abs_diff(guided, read_npz(path("s3_b4.npz"), "arr_0").data), 1);
  EXPECT_GT(max_abs_diff(guided, plain), 8);
  EXPECT_GT(max_abs_diff(read_npz(path("s0.npz"), "arr_0").data, plain), 8);
  EXPECT_NE(difftrain::h5::File::open(path("s3_b1.h5"))
                .attr_string("source")
                .find("\"guidance_scale\":3.0"),
            std::string::npos);
  r = difftrain_mpi(2, "sample --checkpoint " + ckpt +
                           " --num 4 --steps 4 --seed 3 --guidance-scale 3 --out " + path("s3_w2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LE(max_abs_diff(guided, read_npz(path("s3_w2.npz"), "arr_0").data), 1);

  const std::string plain_ckpt = path("cond.pt");
  difftrain::testing::write_tiny_checkpoint(plain_ckpt, conditional_only, conditional_only);
  expect_bad_input(difftrain_cli("sample --checkpoint " + plain_ckpt +
                                 " --num 2 --guidance-scale 2 --out " + path("x")),
                   plain_ckpt, "was not trained for classifier-free guidance");
  expect_bad_input(sample("--guidance-scale -1", "x"), "--guidance-scale", "must be >= 0");

  // Guidance rescale moves the guided images, is recorded, and needs a guided call.
  r = sample("--guidance-scale 3 --guidance-rescale 0.7", "s3_r07");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_GT(max_abs_diff(guided, read_npz(path("s3_r07.npz"), "arr_0").data), 0);
  EXPECT_NE(difftrain::h5::File::open(path("s3_r07.h5"))
                .attr_string("source")
                .find("\"guidance_rescale\":0.7"),
            std::string::npos);
  expect_bad_input(sample("--guidance-rescale 0.7", "x"), "--guidance-rescale 0.7",
                   "give --guidance-scale other than 0 and 1 (now 1)");
  expect_bad_input(sample("--guidance-scale 3 --guidance-rescale 1.5", "x"), "--guidance-rescale",
                   "must be in [0, 1]");
}

// Classifier guidance: an unconditional model guided by a noisy classifier draws the classes in
// turn (or --class), records them as a conditional model's samples, and scale 0 is no guidance.
TEST_F(SampleEvalCli, ClassifierGuidesAnUnconditionalModelAndItsLabelsAreRecorded) {
  const std::string labelled = difftrain::testing::write_tiny_set(path("labelled"), 8, 6, 6, 1, 3);
  const std::string classifier = path("classifier_run/checkpoints/ckpt_000000050.pt");
  difftrain::testing::write_tiny_classifier(classifier, labelled);
  const std::string guide = " --classifier " + path("classifier_run") + " --steps 4 --seed 3";
  for (const std::string sampler : {"ddpm", "ddim", "dpm++2m"}) {
    const Npy unguided = sample_npz("--steps 4 --seed 3 --sampler " + sampler, "u_" + sampler);
    const Npy scale0 =
        sample_npz(guide + " --classifier-scale 0 --sampler " + sampler, "g0_" + sampler);
    const Npy guided =
        sample_npz(guide + " --classifier-scale 50 --sampler " + sampler, "g_" + sampler);
    EXPECT_EQ(scale0.data, unguided.data) << sampler;
    EXPECT_GT(max_abs_diff(guided.data, unguided.data), 10) << sampler;
    const Npy labels = read_npz(path("g_" + sampler + ".npz"), "arr_1");
    std::vector<int64_t> got(3);
    std::memcpy(got.data(), labels.data.data(), 24);
    EXPECT_EQ(got, (std::vector<int64_t>{0, 1, 2})) << "every class in turn";
  }
  const ProcessResult r = difftrain_cli("sample --checkpoint " + checkpoint_ + " --num 2" + guide +
                                        " --class 2 --out " + path("c2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("guided by the classifier"), std::string::npos) << r.output;
  EXPECT_EQ(difftrain::h5::File::open(path("c2.h5")).read<int64_t>("labels"),
            (std::vector<int64_t>{2, 2}));
  // Two ranks draw what one draws.
  const ProcessResult two =
      difftrain_mpi(2, "sample --checkpoint " + checkpoint_ + " --num 3" + guide +
                           " --classifier-scale 50 --out " + path("g_two"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_LE(max_abs_diff(read_npz(path("g_two.npz"), "arr_0").data,
                         read_npz(path("g_ddpm.npz"), "arr_0").data),
            1);
}

TEST_F(SampleEvalCli, AClassifierOfAnotherForwardProcessOrAModelInItsPlaceIsRefused) {
  const std::string labelled = difftrain::testing::write_tiny_set(path("labelled"), 8, 6, 6, 1, 3);
  const std::string cosine = path("cosine.pt"), linear = path("linear.pt");
  difftrain::testing::write_tiny_classifier(cosine, labelled, "cosine");
  difftrain::testing::write_tiny_classifier(linear, labelled);
  expect_bad_input(difftrain_cli("sample --run " + run_ + " --num 2 --classifier " + cosine +
                                 " --out " + path("x")),
                   cosine, "another forward process");
  expect_bad_input(difftrain_cli("sample --run " + run_ + " --num 2 --classifier " + checkpoint_ +
                                 " --out " + path("x")),
                   checkpoint_, "is a diffusion model's checkpoint, not a classifier's");
  expect_bad_input(difftrain_cli("sample --checkpoint " + linear + " --num 2 --out " + path("x")),
                   linear, "noisy classifier's checkpoint");
  expect_bad_input(
      difftrain_cli("eval --checkpoint " + linear + " --data " + heldout_ + " --out " + path("x")),
      linear, "noisy classifier's checkpoint");
  expect_bad_input(difftrain_cli("sample --run " + run_ + " --num 2 --classifier " + linear +
                                 " --classifier-scale -1 --out " + path("x")),
                   "--classifier-scale", "must be >= 0");
  const ProcessResult r =
      difftrain_cli("sample --run " + run_ + " --num 2 --classifier-scale 2 --out " + path("x"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--classifier"), std::string::npos) << r.output;
}

// An upsampler (model.low_res_size 4 of 8x8 images, class-conditional) upsamples the images of
// --low-res: sample i the (i mod n)-th with its label; a 4x4 shard file and a shard set of 8x8
// images whose area-downsampling is that file give the same bytes; 2 ranks give what 1 gives;
// eval runs on it; missing or unfit low-res images are refused naming what is wrong.
TEST_F(SampleEvalCli, AnUpsamplerUpsamplesTheLowResImagesItIsGiven) {
  const std::string big = difftrain::testing::write_tiny_set(path("big"), 2, 8, 8, 1, 3, 7, 2);
  const std::string low = difftrain::testing::write_tiny_set(path("low"), 2, 4, 4, 1, 3, 7);
  std::string yaml = difftrain::testing::tiny_config_yaml(big, 0, true);
  const std::string heads = "  num_heads: 1\n";
  yaml.replace(yaml.find(heads), heads.size(), heads + "  low_res_size: 4\n");
  const std::string up = path("up");
  difftrain::testing::write_tiny_checkpoint(up + "/checkpoints/ckpt_000000100.pt", yaml, yaml);
  const std::string args = " --num 5 --sampler ddim --steps 4 --batch 2";
  const std::string low_file = path("low") + "/shard_00000.h5";

  ProcessResult r =
      difftrain_cli("sample --run " + up + args + " --low-res " + low_file + " --out " + path("a"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Npy a = read_npz(path("a.npz"), "arr_0");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{5, 8, 8, 1}));
  const Npy labels = read_npz(path("a.npz"), "arr_1");
  std::vector<int64_t> got(5);
  std::memcpy(got.data(), labels.data.data(), 5 * sizeof(int64_t));
  EXPECT_EQ(got, (std::vector<int64_t>{0, 1, 0, 1, 0})) << "the low-res images' labels, cycled";

  // A base model's samples as image_sample.py and `difftrain sample` write them, an .npz of arr_0
  // images and arr_1 labels, upsample as the same images in a shard file (here a's own 8x8
  // outputs, area-downsampled first, their labels cycled again).
  for (const std::string ext : {"npz", "h5"}) {
    r = difftrain_cli("sample --run " + up + args + " --low-res " + path("a." + ext) + " --out " +
                      path("from_" + ext));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  EXPECT_EQ(read_npz(path("from_npz.npz"), "arr_0").data,
            read_npz(path("from_h5.npz"), "arr_0").data);
  EXPECT_EQ(read_npz(path("from_npz.npz"), "arr_1").data, labels.data);
  const std::vector<uint8_t> pixels(2 * 4 * 4, 0);
  difftrain::data::write_npz(path("unnamed.npz"),
                             {{"images", "|u1", pixels.data(), 1, {2, 4, 4, 1}}});
  expect_bad_input(difftrain_cli("sample --run " + up + args + " --low-res " + path("unnamed.npz") +
                                 " --out " + path("x")),
                   path("unnamed.npz"), "no arr_0");

  r = difftrain_cli("sample --run " + up + args + " --low-res " + path("big") + " --out " +
                    path("b"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_npz(path("b.npz"), "arr_0").data, a.data);
  r = difftrain_mpi(
      2, "sample --run " + up + args + " --low-res " + low_file + " --out " + path("two"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LE(max_abs_diff(read_npz(path("two.npz"), "arr_0").data, a.data), 1);
  // Other low-res images, other samples from the same noise.
  const std::string other = difftrain::testing::write_tiny_set(path("other"), 2, 4, 4, 1, 3, 8);
  r = difftrain_cli("sample --run " + up + args + " --low-res " + other + " --out " + path("c"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_GT(max_abs_diff(read_npz(path("c.npz"), "arr_0").data, a.data), 5);

  r = difftrain_cli("eval --run " + up + " --data " + big + " --out " + path("e"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(std::isfinite(read_json(path("e.json"))["total_bpd"].get<double>()));

  expect_bad_input(difftrain_cli("sample --run " + up + args + " --out " + path("x")), "--low-res",
                   "is an upsampler from 4x4 images");
  expect_bad_input(
      difftrain_cli("sample --run " + run_ + args + " --low-res " + low + " --out " + path("x")),
      "--low-res", "is not an upsampler");
  expect_bad_input(
      difftrain_cli("sample --run " + up + args + " --low-res " + train_ + " --out " + path("x")),
      train_, "holds 1x6x6 images; the upsampler takes 1x4x4");
  const std::string unlabelled =
      difftrain::testing::write_tiny_set(path("nolabels"), 2, 4, 4, 1, 0);
  expect_bad_input(difftrain_cli("sample --run " + up + args + " --low-res " + unlabelled +
                                 " --out " + path("x")),
                   unlabelled, "has no labels");
}

// A noise-conditioned upsampler (model.low_res_noise): --low-res-noise picks the level its low-res
// images are noised to, from a stream of their own; the same seed gives the same images, another
// level other images, 2 ranks what 1 gives; the level is recorded; eval runs. A level outside
// [0, 1], or one given to an upsampler trained without the augmentation, is refused.
TEST_F(SampleEvalCli, ANoiseConditionedUpsamplerSamplesAtTheLevelItIsGiven) {
  const std::string big = difftrain::testing::write_tiny_set(path("nbig"), 2, 8, 8, 1, 3, 7, 2);
  difftrain::testing::write_tiny_set(path("nlow"), 2, 4, 4, 1, 3, 7);
  std::string yaml = difftrain::testing::tiny_config_yaml(big, 0, true);
  const std::string heads = "  num_heads: 1\n";
  std::string plain_yaml = yaml;
  yaml.replace(yaml.find(heads), heads.size(),
               heads + "  low_res_size: 4\n  low_res_noise: true\n");
  plain_yaml.replace(plain_yaml.find(heads), heads.size(), heads + "  low_res_size: 4\n");
  const std::string up = path("noise_up"), plain = path("plain_up");
  difftrain::testing::write_tiny_checkpoint(up + "/checkpoints/ckpt_000000100.pt", yaml, yaml);
  difftrain::testing::write_tiny_checkpoint(plain + "/checkpoints/ckpt_000000100.pt", plain_yaml,
                                            plain_yaml);
  const std::string args =
      " --num 4 --sampler ddim --steps 4 --batch 2 --low-res " + path("nlow") + "/shard_00000.h5";
  const auto sample = [&](const std::string& level, const std::string& out) {
    const ProcessResult r = difftrain_cli("sample --run " + up + args + " --low-res-noise " +
                                          level + " --out " + path(out));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return read_npz(path(out + ".npz"), "arr_0").data;
  };
  const auto clean = sample("0", "n0");
  EXPECT_EQ(sample("0", "n0_again"), clean);
  const auto half = sample("0.5", "n5");
  EXPECT_GT(max_abs_diff(half, clean), 5) << "the level reaches the network";
  const nlohmann::json source =
      nlohmann::json::parse(difftrain::h5::File::open(path("n5.h5")).attr_string("source"));
  EXPECT_EQ(source["low_res_noise"], 0.5);
  const ProcessResult two = difftrain_mpi(
      2, "sample --run " + up + args + " --low-res-noise 0.5 --out " + path("n5_two"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  EXPECT_LE(max_abs_diff(read_npz(path("n5_two.npz"), "arr_0").data, half), 1);

  const ProcessResult e =
      difftrain_cli("eval --run " + up + " --data " + big + " --out " + path("ne"));
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_TRUE(std::isfinite(read_json(path("ne.json"))["total_bpd"].get<double>()));

  expect_bad_input(
      difftrain_cli("sample --run " + up + args + " --low-res-noise 1.5 --out " + path("x")),
      "--low-res-noise 1.5", "must be in [0, 1]");
  expect_bad_input(
      difftrain_cli("sample --run " + plain + args + " --low-res-noise 0.2 --out " + path("x")),
      "--low-res-noise 0.2",
      "was not trained with noise conditioning augmentation (model.low_res_noise)");
}

TEST_F(SampleEvalCli, BadSamplingOptions) {
  expect_bad_input(
      difftrain_cli("sample --run " + run_ + " --num 2 --respacing ddim11 --out " + path("x")),
      "ddim11", "no integer stride gives exactly 11 steps");
  expect_bad_input(difftrain_cli("sample --run " + run_ + " --num 2 --class 1 --out " + path("x")),
                   checkpoint_, "unconditional");
  expect_bad_input(difftrain_cli("sample --run " + run_ + " --num 2 --eta 0.5 --out " + path("x")),
                   "--eta", "--sampler ddim only");
  expect_bad_input(difftrain_cli("sample --run " + run_ +
                                 " --num 2 --sampler dpm++2m --eta 0 --out " + path("x")),
                   "--eta", "--sampler ddim only");
  expect_bad_input(difftrain_cli("sample --run " + run_ + " --num 0 --out " + path("x")), "--num",
                   "must be >= 1");
}

// `difftrain plot` as launch/reproduce.sh's report uses it: a Python CSV (CRLF line ends, nan
// for a run without a value), several columns told apart by a legend, a chosen width.
TEST(PlotCli, SeveralColumnsGetALegend) {
  const fs::path dir = fs::temp_directory_path() / ("difftrain_plot_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string csv = (dir / "curves.csv").string(), png = (dir / "curves.png").string();
  std::ofstream(csv) << "images,run_a,run_b\r\n0,4.0,5.0\r\n32,3.0,nan\r\n64,2.5,3.5\r\n";
  ProcessResult r = difftrain_cli("plot --csv " + csv + " --x images --y run_a --y run_b " +
                                  "--width 1000 --height 400 --out " + png);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Png size;
  std::vector<uint8_t> rgb = read_png_rgb(png, size);
  ASSERT_EQ(size.width, 1000);
  ASSERT_EQ(size.height, 400);
  // The legend: a short horizontal stroke in each column's color (blue, orange), one above the
  // other and starting at the same x, right of the lines (whose segments here are steep).
  const auto stroke_x = [&](std::array<uint8_t, 3> c) -> int64_t {
    for (int64_t y = 0; y < size.height; ++y)
      for (int64_t x = 0, run = 0; x < size.width; ++x) {
        const uint8_t* p = &rgb[static_cast<std::size_t>((y * size.width + x) * 3)];
        run = (p[0] == c[0] && p[1] == c[1] && p[2] == c[2]) ? run + 1 : 0;
        if (run == 18) return x - 17;
      }
    return -1;
  };
  const std::array<uint8_t, 3> blue{31, 119, 180}, orange{255, 127, 14};
  EXPECT_GT(stroke_x(blue), 800);
  EXPECT_EQ(stroke_x(blue), stroke_x(orange));

  // One column: no legend.
  ASSERT_EQ(difftrain_cli("plot --csv " + csv + " --x images --y run_a --out " + png).exit_code, 0);
  rgb = read_png_rgb(png, size);
  EXPECT_EQ(size.width, 800);
  EXPECT_EQ(stroke_x(blue), -1);
  r = difftrain_cli("plot --csv " + csv + " --x images --y run_c --out " + png);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("run_c"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

}  // namespace
