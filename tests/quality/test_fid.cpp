// FID's Inception network and `difftrain fid` against FID as pytorch-fid computes it
// (fid_reference.py: eager PyTorch and NumPy), on random weights written by PyTorch with the
// names of pytorch-fid's file, and sFID as guided-diffusion's evaluator takes its features. Also:
// the sets as shards, on 2 ranks, through a statistics file, and the errors of bad input; the
// Inception Score against improved-gan's code, and precision and recall against guided-diffusion's
// evaluator.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/difftrain_cli.hpp"
#include "quality/feature_statistics.hpp"
#include "quality/fid_inception.hpp"
#include "quality/inception_score.hpp"
#include "quality/precision_recall.hpp"
#include "weights/pt_file.hpp"
#include "weights/state_dict.hpp"

namespace fs = std::filesystem;
using difftrain::testing::difftrain_cli;
using difftrain::testing::difftrain_mpi;
using difftrain::testing::ProcessResult;
using difftrain::testing::run_command;
using json = nlohmann::json;

namespace difftrain::quality {
namespace {

json last_json_line(const ProcessResult& r) {
  const auto start = r.output.find_last_of('\n', r.output.size() - 2);
  return json::parse(r.output.substr(start == std::string::npos ? 0 : start + 1), nullptr, false);
}

json reference(const std::string& args) {
  const ProcessResult r = run_command("OMP_NUM_THREADS=2 " + std::string(DIFFTRAIN_PYTHON) + " " +
                                      FID_REFERENCE + " " + args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return last_json_line(r);
}

json read_json(const fs::path& path) {
  std::ifstream f(path);
  return json::parse(f);
}

// Random weights and four small sets of images, written once for the suite: 6 gray 28 x 28 images
// (as Fashion-MNIST's), 5 RGB 32 x 32 images, both uniform noise; 8 gray images of 8 levels with
// noise of 3 strengths (noise images all look alike to a random network: their class
// probabilities hardly differ, and their Inception Score is 1.001); and 3 of those 8 with 3
// noise images, a set that covers part of them.
class Fid : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(DIFFTRAIN_PYTHON)) return;
    dir_ = fs::temp_directory_path() / ("difftrain_test_fid_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    tensors_ = reference("write-weights " + path("inception.pt") + " 3")["tensors"].get<int>();
    const ProcessResult r = run_command(
        std::string(DIFFTRAIN_PYTHON) +
        " -c \"import numpy as np; r = np.random.default_rng(0); "
        "np.savez('" +
        path("gray.npz") +
        "', r.integers(0, 256, (6, 28, 28), dtype=np.uint8), "
        "np.arange(6)); "
        "np.savez('" +
        path("rgb.npz") +
        "', r.integers(0, 200, (5, 32, 32, 3), dtype=np.uint8)); "
        "x = [np.clip(v + r.normal(0, 30 * (i % 3), (28, 28)), 0, 255) "
        "for i, v in enumerate(np.linspace(0, 255, 8))]; "
        "np.savez('" +
        path("varied.npz") + "', np.stack(x).astype(np.uint8)); np.savez('" + path("near.npz") +
        "', np.concatenate([np.stack(x).astype(np.uint8)[[0, 3, 6]], "
        "r.integers(0, 256, (3, 28, 28), dtype=np.uint8)]))\"");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  void SetUp() override {
    if (!fs::exists(DIFFTRAIN_PYTHON))
      GTEST_SKIP() << DIFFTRAIN_PYTHON << " is missing: launch/setup.sh makes it";
  }
  static std::string path(const std::string& name) { return (dir_ / name).string(); }

  static inline fs::path dir_;
  static inline int tensors_ = 0;
};

TEST_F(Fid, TheNetworkLoadsPytorchFidsNamesAndGivesPyTorchsFeatures) {
  // The file has the fc head and num_batches_tracked counters, as pytorch-fid's: 566 tensors.
  EXPECT_EQ(tensors_, 566);
  FidInception net = load_fid_inception(path("inception.pt"), at::kCPU);
  const json expected = reference("features " + path("inception.pt") + " " + path("gray.npz"));
  ASSERT_EQ(expected["pool3"].size(), 6u);
  ASSERT_EQ(expected["spatial"].size(), 6u);
  at::Tensor images = at::randint(0, 256, {6, 28, 28, 1}, at::kByte);
  {
    // The same pixels as the .npz: read them back through numpy's layout.
    const ProcessResult r = run_command(std::string(DIFFTRAIN_PYTHON) +
                                        " -c \"import numpy as np, json; print(json.dumps("
                                        "np.load('" +
                                        path("gray.npz") + "')['arr_0'].reshape(-1).tolist()))\"");
    const json pixels = last_json_line(r);
    ASSERT_EQ(pixels.size(), 6u * 28 * 28);
    for (int64_t i = 0; i < images.numel(); ++i)
      images.view(-1)[i] = pixels[i].get<int>();
  }
  const InceptionFeatures features = inception_features(net, images);
  ASSERT_EQ(features.pool3.sizes(), (at::IntArrayRef{6, kPool3Features}));
  // sFID's: Mixed_6d's first 7 channels against the reference's branch1x1 run on its own, in
  // TensorFlow's (h, w, c) order.
  ASSERT_EQ(features.spatial.sizes(), (at::IntArrayRef{6, kSpatialFeatures}));
  for (const auto& [name, got] :
       {std::pair{"pool3", features.pool3}, std::pair{"spatial", features.spatial}}) {
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < 6; ++i)
      for (int64_t k = 0; k < got.size(1); ++k) {
        const double e = expected[name][i][k].get<double>();
        worst = std::max(worst, std::abs(got[i][k].item<double>() - e));
        scale = std::max(scale, std::abs(e));
      }
    EXPECT_GT(scale, 0.1) << name;
    EXPECT_LT(worst, 1e-4 * scale) << name << ": largest feature " << scale;
  }

  // pytorch-fid's published file predates PyTorch 1.6: the same weights in that legacy format
  // give the same features.
  const ProcessResult legacy =
      run_command(std::string(DIFFTRAIN_PYTHON) + " -c \"import torch; torch.save(torch.load('" +
                  path("inception.pt") + "'), '" + path("legacy.pt") +
                  "', _use_new_zipfile_serialization=False)\"");
  ASSERT_EQ(legacy.exit_code, 0) << legacy.output;
  FidInception from_legacy = load_fid_inception(path("legacy.pt"), at::kCPU);
  EXPECT_TRUE(at::equal(inception_features(from_legacy, images).pool3, features.pool3));
}

TEST_F(Fid, AFileWithoutATensorOrWithTheWrongNetworkIsRefusedNamingIt) {
  weights::StateDict state = weights::load_pt(path("inception.pt"));
  weights::StateDict without;
  for (const auto& t : state)
    if (t.name != "Mixed_7c.branch_pool.bn.running_var") without.push_back(t);
  weights::save_pt(without, path("without.pt"));
  try {
    load_fid_inception(path("without.pt"), at::kCPU);
    FAIL() << "no error";
  } catch (const weights::WeightsError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("without.pt"), std::string::npos) << what;
    EXPECT_NE(what.find("Mixed_7c.branch_pool.bn.running_var"), std::string::npos) << what;
  }
  const ProcessResult r = difftrain_cli("fid " + path("gray.npz") + " " + path("rgb.npz") +
                                        " --inception " + path("without.pt"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("Mixed_7c.branch_pool.bn.running_var"), std::string::npos) << r.output;
}

TEST_F(Fid, TheCommandGivesPytorchFidsFidOnNpzFilesAndShards) {
  const json expected =
      reference("fid " + path("inception.pt") + " " + path("gray.npz") + " " + path("rgb.npz"));
  const double fid = expected["fid"].get<double>();
  ASSERT_GT(fid, 1.0);
  const ProcessResult r =
      difftrain_cli("fid " + path("gray.npz") + " " + path("rgb.npz") + " --inception " +
                    path("inception.pt") + " --batch 4" + " --out " + path("fid.json"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json report = read_json(path("fid.json"));
  EXPECT_NEAR(report["fid"].get<double>(), fid, 1e-5 * fid) << r.output;
  const double sfid = expected["sfid"].get<double>();
  ASSERT_GT(sfid, 1.0);
  EXPECT_NEAR(report["sfid"].get<double>(), sfid, 1e-5 * sfid) << r.output;
  EXPECT_NE(r.output.find("sFID "), std::string::npos) << r.output;
  EXPECT_EQ(report["sets"][0]["images"], 6);
  EXPECT_EQ(report["sets"][1]["images"], 5);
  EXPECT_NE(r.output.find("FID "), std::string::npos) << r.output;

  // The gray images as a shard set: the same pixels, the same FID, to rounding.
  const ProcessResult shard =
      run_command(std::string(H5SHARD_BINARY) + " convert --format npy --input " +
                  path("gray.npz") + " --out " + path("gray_shards"));
  ASSERT_EQ(shard.exit_code, 0) << shard.output;
  const ProcessResult s =
      difftrain_cli("fid " + path("gray_shards") + " " + path("rgb.npz") + " --inception " +
                    path("inception.pt") + " --out " + path("fid_shards.json"));
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_NEAR(read_json(path("fid_shards.json"))["fid"].get<double>(), report["fid"].get<double>(),
              1e-9 * fid);
}

TEST_F(Fid, TwoRanksGiveOneRanksFid) {
  const std::string args = "fid " + path("gray.npz") + " " + path("rgb.npz") + " --inception " +
                           path("inception.pt") + " --batch 2 --out ";
  const ProcessResult one = difftrain_cli(args + path("one.json"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const ProcessResult two = difftrain_mpi(2, args + path("two.json"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  const json a = read_json(path("one.json")), b = read_json(path("two.json"));
  EXPECT_EQ(b["ranks"], 2);
  EXPECT_EQ(b["sets"][0]["images"], 6);
  EXPECT_EQ(b["sets"][1]["images"], 5);
  // The same features summed in another order (and the other rank's batches of 2 and 1).
  EXPECT_NEAR(b["fid"].get<double>(), a["fid"].get<double>(), 1e-9 * a["fid"].get<double>());
  EXPECT_NEAR(b["sfid"].get<double>(), a["sfid"].get<double>(), 1e-9 * a["sfid"].get<double>());
  // Precision and recall with 5 images over 2 ranks: shares of 2 and 3, gathered in rank order.
  ASSERT_TRUE(a.contains("precision_recall")) << a.dump();
  EXPECT_EQ(b["precision_recall"], a["precision_recall"]);
}

TEST_F(Fid, SavedStatisticsGiveTheSameFidAndNumpyReadsThem) {
  const ProcessResult saved =
      difftrain_cli("fid " + path("rgb.npz") + " --inception " + path("inception.pt") +
                    " --save-stats " + path("rgb_stats.npz"));
  ASSERT_EQ(saved.exit_code, 0) << saved.output;
  const SetStatistics stats = read_statistics(path("rgb_stats.npz"));
  EXPECT_EQ(stats.pool3.count, 5);
  EXPECT_EQ(stats.pool3.sigma.sizes(), (at::IntArrayRef{kPool3Features, kPool3Features}));
  ASSERT_TRUE(stats.spatial);
  EXPECT_EQ(stats.spatial->count, 5);
  EXPECT_EQ(stats.spatial->sigma.sizes(), (at::IntArrayRef{kSpatialFeatures, kSpatialFeatures}));

  // NumPy's mu of the same images, from the reference, against the file's, read by NumPy.
  const json expected =
      reference("fid " + path("inception.pt") + " " + path("gray.npz") + " " + path("rgb.npz"));
  const ProcessResult numpy =
      run_command(std::string(DIFFTRAIN_PYTHON) + " -c \"import numpy as np, json; s = np.load('" +
                  path("rgb_stats.npz") +
                  "'); print(json.dumps([s['mu'].tolist(), float(np.trace(s['sigma'])), "
                  "s['mu_s'].tolist()]))\"");
  const json read = last_json_line(numpy);
  ASSERT_EQ(read[0].size(), static_cast<std::size_t>(kPool3Features)) << numpy.output;
  for (int64_t k = 0; k < kPool3Features; k += 97)
    EXPECT_NEAR(read[0][k].get<double>(), expected["mu"][1][k].get<double>(), 1e-4);
  ASSERT_EQ(read[2].size(), static_cast<std::size_t>(kSpatialFeatures)) << numpy.output;
  for (int64_t k = 0; k < kSpatialFeatures; k += 97)
    EXPECT_NEAR(read[2][k].get<double>(), expected["mu_s"][1][k].get<double>(), 1e-4);
  EXPECT_NEAR(read[1].get<double>(), expected["sigma_trace"][1].get<double>(),
              1e-4 * expected["sigma_trace"][1].get<double>());

  // A report has the reference's FID and sFID, to 1e-5 relative.
  const auto expect_reference_distances = [&](const std::string& report_file) {
    const json report = read_json(path(report_file));
    for (const char* key : {"fid", "sfid"})
      EXPECT_NEAR(report[key].get<double>(), expected[key].get<double>(),
                  1e-5 * expected[key].get<double>())
          << report_file << ": " << key;
  };
  // FID and sFID from the statistics file equal those from the images.
  const ProcessResult from_stats =
      difftrain_cli("fid " + path("gray.npz") + " " + path("rgb_stats.npz") + " --inception " +
                    path("inception.pt") + " --out " + path("from_stats.json"));
  ASSERT_EQ(from_stats.exit_code, 0) << from_stats.output;
  expect_reference_distances("from_stats.json");
  // Two statistics files need no network.
  ASSERT_EQ(difftrain_cli("fid " + path("gray.npz") + " --inception " + path("inception.pt") +
                          " --save-stats " + path("gray_stats.npz"))
                .exit_code,
            0);
  const ProcessResult no_network =
      difftrain_cli("fid " + path("gray_stats.npz") + " " + path("rgb_stats.npz") + " --out " +
                    path("no_network.json"));
  ASSERT_EQ(no_network.exit_code, 0) << no_network.output;
  expect_reference_distances("no_network.json");

  // pytorch-fid's files have mu and sigma only: FID, and no sFID, which the log says.
  ASSERT_EQ(run_command(std::string(DIFFTRAIN_PYTHON) + " -c \"import numpy as np; s = np.load('" +
                        path("rgb_stats.npz") + "'); np.savez('" + path("pytorch_fid.npz") +
                        "', mu=s['mu'], sigma=s['sigma'])\"")
                .exit_code,
            0);
  const ProcessResult pool3_only =
      difftrain_cli("fid " + path("gray_stats.npz") + " " + path("pytorch_fid.npz") + " --out " +
                    path("pool3_only.json"));
  ASSERT_EQ(pool3_only.exit_code, 0) << pool3_only.output;
  const json pool3_report = read_json(path("pool3_only.json"));
  EXPECT_NEAR(pool3_report["fid"].get<double>(), expected["fid"].get<double>(),
              1e-5 * expected["fid"].get<double>());
  EXPECT_FALSE(pool3_report.contains("sfid")) << pool3_report.dump();
  EXPECT_NE(pool3_only.output.find("no sFID: " + path("pytorch_fid.npz") + " has no spatial"),
            std::string::npos)
      << pool3_only.output;
}

// improved-gan's splits: [s·n/S, (s+1)·n/S).
TEST(InceptionScore, SplitsAreImprovedGansContiguousParts) {
  for (const auto& [n, splits] : {std::pair{8, 3}, {10, 10}, {7, 3}, {50000, 10}, {5, 1}})
    for (int64_t s = 0; s < splits; ++s)
      for (int64_t i = s * n / splits; i < (s + 1) * n / splits; ++i)
        ASSERT_EQ(split_of(i, n, splits), s) << "image " << i << " of " << n << ", " << splits;
}

// Images whose class probabilities are known: one-hot over k classes, evenly, scores k; the same
// p(y|x) for every image scores 1.
TEST(InceptionScore, MatchesItsClosedForms) {
  const int64_t classes = 6;
  ClassProbabilitySums sums = zero_class_probability_sums(2, classes, 12, at::kCPU);
  at::Tensor logits = at::full({12, classes}, -200.0);
  for (int64_t i = 0; i < 6; ++i)
    logits[i][i % 3] = 200;  // split 0: classes 0, 1, 2, twice each
  logits.narrow(0, 6, 6).copy_(at::arange(classes).to(at::kDouble).expand({6, classes}));
  sums.add(logits.narrow(0, 0, 5), 0);  // in two batches
  sums.add(logits.narrow(0, 5, 7), 5);
  const InceptionScore score = inception_score(sums);
  ASSERT_EQ(score.splits.size(), 2u);
  EXPECT_NEAR(score.splits[0], 3.0, 1e-12);
  EXPECT_NEAR(score.splits[1], 1.0, 1e-12);
  EXPECT_NEAR(score.mean, 2.0, 1e-12);
  EXPECT_NEAR(score.std, 1.0, 1e-12);
  EXPECT_THROW(zero_class_probability_sums(10, classes, 9, at::kCPU), std::invalid_argument);
}

// ln IS per split within 1e-4 of improved-gan's code on the reference's features; a score that
// used the head's bias, other split bounds or one p(y) for the whole set would miss by far more.
TEST_F(Fid, TheInceptionScoreIsImprovedGansOnOneAndTwoRanks) {
  const json expected =
      reference("inception-score " + path("inception.pt") + " " + path("varied.npz") + " 3");
  ASSERT_EQ(expected["splits"].size(), 3u);
  ASSERT_GT(expected["mean"].get<double>(), 1.01) << "the test's images score too near 1";
  const auto expect_scores = [&](const json& got, const std::string& what) {
    ASSERT_EQ(got["splits"].size(), 3u) << what;
    for (int s = 0; s < 3; ++s) {
      const double e = std::log(expected["splits"][s].get<double>());
      EXPECT_NEAR(std::log(got["splits"][s].get<double>()), e, 1e-4 * e + 1e-7) << what << s;
    }
    EXPECT_NEAR(got["mean"].get<double>(), expected["mean"].get<double>(), 1e-5) << what;
    EXPECT_NEAR(got["std"].get<double>(), expected["std"].get<double>(), 1e-5) << what;
  };
  // One set alone: its score only.
  const std::string args = "fid " + path("varied.npz") + " --inception " + path("inception.pt") +
                           " --is-splits 3 --batch 3 --out ";
  const ProcessResult one = difftrain_cli(args + path("is_one.json"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_NE(one.output.find("IS "), std::string::npos) << one.output;
  const json a = read_json(path("is_one.json"));
  EXPECT_FALSE(a.contains("fid"));
  expect_scores(a["sets"][0]["inception_score"], "1 rank, split ");
  // 2 ranks of 4 images: the middle split [2, 5) lies on both.
  const ProcessResult two = difftrain_mpi(2, args + path("is_two.json"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  expect_scores(read_json(path("is_two.json"))["sets"][0]["inception_score"], "2 ranks, split ");
  // Next to a FID, each set of images has its score; one of fewer images than splits has none.
  const ProcessResult both =
      difftrain_cli("fid " + path("varied.npz") + " " + path("rgb.npz") + " --inception " +
                    path("inception.pt") + " --is-splits 6 --out " + path("is_fid.json"));
  ASSERT_EQ(both.exit_code, 0) << both.output;
  const json b = read_json(path("is_fid.json"));
  EXPECT_TRUE(b.contains("fid"));
  EXPECT_EQ(b["sets"][0]["inception_score"]["splits"].size(), 6u);
  EXPECT_FALSE(b["sets"][1].contains("inception_score"));
  EXPECT_NE(both.output.find("no Inception Score: 5 images, fewer than its 6 splits"),
            std::string::npos)
      << both.output;
}

// Points on a line (the first feature; the others 0), k = 1. References 0, 1, 2, 3, 10: squared
// radii 1, 1, 1, 1, 49. Samples 0.5, 5, 20: squared radii 20.25, 20.25, 225. 0.5 and 5 lie in
// the references' balls, 20 does not (100 > 49): precision 2/3. Every reference lies in a
// sample's ball (10 in 20's, 100 <= 225): recall 1.
TEST(PrecisionRecall, MatchesAWorkedExampleInBlocksAndSlices) {
  const auto on_line = [](std::vector<double> x) {
    at::Tensor f = at::zeros({static_cast<int64_t>(x.size()), 5});
    f.select(1, 0).copy_(at::tensor(x).to(at::kFloat));
    return f;
  };
  const at::Tensor references = on_line({0, 1, 2, 3, 10}), samples = on_line({0.5, 5, 20});
  const at::Tensor r_ref = at::cat({manifold_radii(references, 1, 0, 3, 2),    // in two slices,
                                    manifold_radii(references, 1, 3, 5, 1)});  // blocks of 2 and 1
  EXPECT_TRUE(at::allclose(r_ref, at::tensor({1.0, 1.0, 1.0, 1.0, 49.0}).to(at::kFloat))) << r_ref;
  const at::Tensor r_samples = manifold_radii(samples, 1, 0, 3, 3);
  EXPECT_TRUE(at::allclose(r_samples, at::tensor({20.25, 20.25, 225.0}).to(at::kFloat)))
      << r_samples;
  EXPECT_TRUE(at::equal(in_manifold(samples, references, r_ref, 2).to(at::kLong),
                        at::tensor({1, 1, 0}).to(at::kLong)));
  EXPECT_TRUE(in_manifold(references, samples, r_samples, 4).all().item<bool>());
  // k = 2: 0's ball reaches 2 (squared radius 4).
  EXPECT_FLOAT_EQ(manifold_radii(references, 2, 0, 1, 1).item<float>(), 4.0f);
  EXPECT_THROW(manifold_radii(samples, 3, 0, 3, 3), std::invalid_argument);
}

// The command against guided-diffusion's ManifoldEstimator in NumPy on the reference's features:
// 8 images of 8 levels against 3 of them and 3 noise images, k = 1, on 1 and 2 ranks.
TEST_F(Fid, PrecisionAndRecallAreGuidedDiffusionsOnOneAndTwoRanks) {
  const json expected = reference("precision-recall " + path("inception.pt") + " " +
                                  path("varied.npz") + " " + path("near.npz") + " 1");
  // Neither 0 nor 1, and no query within 1 % of the largest radius of the other answer: feature
  // differences of 1e-4 cannot turn one.
  EXPECT_EQ(expected["precision"].get<double>(), 7.0 / 8.0);
  EXPECT_EQ(expected["recall"].get<double>(), 3.0 / 6.0);
  ASSERT_GT(expected["margin"].get<double>(), 0.01);
  const std::string args = "fid " + path("varied.npz") + " " + path("near.npz") + " --inception " +
                           path("inception.pt") + " --pr-k 1 --batch 3 --out ";
  const ProcessResult one = difftrain_cli(args + path("pr_one.json"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_NE(one.output.find("precision 0.8750, recall 0.5000"), std::string::npos) << one.output;
  const ProcessResult two = difftrain_mpi(2, args + path("pr_two.json"));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  for (const char* name : {"pr_one.json", "pr_two.json"}) {
    const json pr = read_json(path(name))["precision_recall"];
    EXPECT_EQ(pr["k"], 1) << name;
    EXPECT_EQ(pr["precision"].get<double>(), expected["precision"].get<double>()) << name;
    EXPECT_EQ(pr["recall"].get<double>(), expected["recall"].get<double>()) << name;
  }
  // A statistics file has no features to compare: FID only, and no error.
  ASSERT_EQ(difftrain_cli("fid " + path("near.npz") + " --inception " + path("inception.pt") +
                          " --is-splits 0 --save-stats " + path("near_stats.npz"))
                .exit_code,
            0);
  const ProcessResult stats =
      difftrain_cli("fid " + path("varied.npz") + " " + path("near_stats.npz") + " --inception " +
                    path("inception.pt") + " --out " + path("pr_stats.json"));
  ASSERT_EQ(stats.exit_code, 0) << stats.output;
  EXPECT_FALSE(read_json(path("pr_stats.json")).contains("precision_recall"));
}

TEST_F(Fid, BadInputIsAOneLineErrorNamingWhatIsWrong) {
  const auto expect_error = [](const std::string& args, const std::string& message) {
    const ProcessResult r = difftrain_cli("fid " + args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << args << "\n" << r.output;
  };
  const std::string weights = " --inception " + path("inception.pt");
  expect_error(path("gray.npz") + weights + " --is-splits 0",
               "give a second to compare it with, --save-stats FILE.npz");
  expect_error(path("gray.npz") + weights,
               "gray.npz: 6 images, fewer than the Inception Score's 10 "
               "splits: give --is-splits 6 or fewer");
  expect_error(path("gray.npz") + " " + path("rgb.npz") + weights + " --is-splits -1",
               "--is-splits must be >= 0");
  expect_error(path("gray.npz") + " " + path("rgb.npz") + weights + " --pr-k -1",
               "--pr-k must be >= 0");
  expect_error(path("gray.npz") + " " + path("rgb.npz"), "--inception FILE is needed");
  expect_error(path("gray.npz") + " " + path("nothing.npz") + weights,
               "nothing.npz: no such file or directory");
  expect_error(
      path("gray.npz") + " " + path("rgb.npz") + weights + " --save-stats " + path("s.npz"),
      "--save-stats takes one set of images, not two");
  expect_error(path("gray.npz") + " " + path("rgb.npz") + weights + " --batch 0",
               "--batch must be >= 1");
  expect_error(path("gray.npz") + " " + path("rgb.npz") + " --inception " + path("gray.npz"),
               "gray.npz");
  ASSERT_EQ(run_command(std::string(DIFFTRAIN_PYTHON) + " -c \"import numpy as np; np.savez('" +
                        path("two.npz") + "', np.zeros((3, 8, 8, 2), np.uint8))\"")
                .exit_code,
            0);
  expect_error(path("gray.npz") + " " + path("two.npz") + weights,
               "two.npz: images of 2 channels; FID's network takes gray (1) or RGB (3) images");
  ASSERT_EQ(
      run_command(std::string(DIFFTRAIN_PYTHON) + " -c \"import numpy as np; np.savez('" +
                  path("half.npz") + "', mu=np.zeros(4), sigma=np.eye(4), mu_s=np.zeros(3))\"")
          .exit_code,
      0);
  expect_error(path("gray.npz") + " " + path("half.npz") + weights,
               "half.npz: mu_s without sigma_s");
}

}  // namespace
}  // namespace difftrain::quality
