// `difftrain export` and `difftrain import` as a user runs them, on tiny checkpoints written here,
// checked against PyTorch: bench/baseline's eager improved-diffusion UNet loads the exports
// strictly and reproduces the conformance vector, Python's safetensors package reads the
// safetensors exports, and a state dict that PyTorch saved imports into the same outputs. Bad
// files are one-line errors with exit code 2. The Python side is pytorch_side.py in the project's
// .venv (launch/setup.sh installs torch and safetensors there).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/difftrain_cli.hpp"
#include "model/encoder_unet.hpp"
#include "sample/tiny_run.hpp"
#include "train/checkpoint.hpp"
#include "train/classifier.hpp"
#include "weights/pt_file.hpp"
#include "weights/safetensors_file.hpp"

namespace fs = std::filesystem;
using difftrain::testing::difftrain_cli;
using difftrain::testing::ProcessResult;
using json = nlohmann::json;

namespace {

// Runs a command of pytorch_side.py and returns its JSON line.
json python(const std::string& args) {
  const ProcessResult r = difftrain::testing::run_command(
      "OMP_NUM_THREADS=1 " + std::string(DIFFTRAIN_PYTHON) + " " + PYTORCH_SIDE + " " + args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const auto last_line = r.output.find_last_of('\n', r.output.size() - 2);
  return json::parse(r.output.substr(last_line == std::string::npos ? 0 : last_line + 1), nullptr,
                     false);
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  return json::parse(f);
}

class ExportImport : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(DIFFTRAIN_PYTHON))
      GTEST_SKIP() << DIFFTRAIN_PYTHON
                   << " is missing (LibTorch from LIBTORCH_DIR): launch/setup.sh makes it";
    dir_ = fs::temp_directory_path() /
           ("difftrain_test_export_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // 6x6 gray images padded to 8; and 8x8 RGB images of 3 classes for a conditional model.
    const std::string yaml = difftrain::testing::tiny_config_yaml(
        difftrain::testing::write_tiny_set(path("gray"), 8, 6, 6, 1, 0));
    const std::string cond_yaml = difftrain::testing::tiny_config_yaml(
        difftrain::testing::write_tiny_set(path("rgb"), 6, 8, 8, 3, 3), 0, true);
    std::ofstream(path("gray.yaml")) << yaml;
    std::ofstream(path("rgb.yaml")) << cond_yaml;
    difftrain::testing::write_tiny_checkpoint(path("run/checkpoints/ckpt_000000100.pt"), yaml,
                                              yaml);
    difftrain::testing::write_tiny_checkpoint(path("cond.pt"), cond_yaml, cond_yaml);
    // The same trained for classifier-free guidance: label_emb has the null label's row too.
    std::string cfg_yaml = cond_yaml;
    const std::string ema = "  ema_rates: [0.9]\n";
    cfg_yaml.insert(cfg_yaml.find(ema) + ema.size(), "  p_uncond: 0.1\n");
    difftrain::testing::write_tiny_checkpoint(path("guided.pt"), cfg_yaml, cfg_yaml);
    // guided-diffusion's architecture: up / down ResBlocks, q, k, v split before 2 heads.
    std::string gd_yaml = yaml;
    const std::string heads = "  num_heads: 1\n";
    gd_yaml.replace(gd_yaml.find(heads), heads.size(),
                    "  num_heads: 2\n  resblock_updown: true\n  use_new_attention_order: true\n");
    difftrain::testing::write_tiny_checkpoint(path("gd_ckpt.pt"), gd_yaml, gd_yaml);
    std::ofstream(path("gd.yaml")) << gd_yaml;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string checkpoint() const { return path("run/checkpoints/ckpt_000000100.pt"); }

  void run_ok(const std::string& args) {
    const ProcessResult r = difftrain_cli(args);
    ASSERT_EQ(r.exit_code, 0) << args << "\n" << r.output;
  }

  // PyTorch saves a state dict of random weights (`seed`) for the network that `model_json` (an
  // export's JSON) describes, as NAME32.pt; `import` reads it with the config `yaml` into
  // NAME_imported.pt, and PyTorch's network with those weights reproduces the imported one's
  // outputs on its exported test batch within 1e-5.
  void expect_pytorch_state_dict_imports(const std::string& name, const std::string& model_json,
                                         const std::string& yaml, int seed) {
    python("write-state-dict " + model_json + " " + std::to_string(seed) + " " +
           path(name + "32.pt") + " " + path(name + "16.pt"));
    run_ok("import --weights " + path(name + "32.pt") + " --config " + yaml + " --out " +
           path(name + "_imported.pt"));
    run_ok("export --checkpoint " + path(name + "_imported.pt") + " --with-test-batch --out " +
           path(name + "_back.pt"));
    const json results = python("forward " + path(name + "_back.json") + " " +
                                path(name + "32.pt") + " " + path(name + "_back.test.pt"));
    ASSERT_EQ(results.size(), 1u);
    EXPECT_LT(results[0]["max_abs_diff"].get<double>(), 1e-5) << results[0];
    EXPECT_GT(results[0]["max_abs_out"].get<double>(), 1e-2) << results[0];
  }

  // The model a checkpoint's stored config builds, holding its raw weights or the EMA at `ema`.
  static difftrain::model::UNet weights_of(const std::string& ckpt, std::optional<double> ema) {
    namespace tr = difftrain::train;
    const tr::Config c = tr::parse_config(tr::read_checkpoint_info(ckpt).config_yaml);
    std::optional<difftrain::data::Manifest> m;
    if (c.model.image_size == 0) m = difftrain::data::read_manifest(c.data.train);
    difftrain::model::UNet net(tr::unet_config(c, tr::data_shape(c, m ? &*m : nullptr)));
    tr::load_model_weights(ckpt, *net, ema);
    return net;
  }

  fs::path dir_;
};

void expect_same_parameters(difftrain::model::UNet a, difftrain::model::UNet b) {
  const auto pa = a->named_parameters(), pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& p : pa)
    EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
}

TEST_F(ExportImport, ExportThenImportIsTheIdentity) {
  for (const std::string ext : {"pt", "safetensors"}) {
    SCOPED_TRACE(ext);
    run_ok("export --run " + path("run") + " --ema none --out " + path("raw." + ext));
    run_ok("export --checkpoint " + checkpoint() + " --ema 0.9 --out " + path("ema." + ext));
    const ProcessResult r = difftrain_cli("import --weights " + path("raw." + ext) +
                                          " --ema-weights " + path("ema." + ext) + " --config " +
                                          path("gray.yaml") + " --out " + path("imported.pt"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("the optimizer starts fresh"), std::string::npos) << r.output;

    expect_same_parameters(weights_of(path("imported.pt"), std::nullopt),
                           weights_of(checkpoint(), std::nullopt));
    expect_same_parameters(weights_of(path("imported.pt"), 0.9), weights_of(checkpoint(), 0.9));
    const auto info = difftrain::train::read_checkpoint_info(path("imported.pt"));
    EXPECT_EQ(info.step, 0);
    EXPECT_EQ(info.imported_from, path("raw." + ext));
  }
}

TEST_F(ExportImport, JsonSaysWhatTheWeightsAreAndTheVectorIsTheirOutput) {
  run_ok("export --checkpoint " + checkpoint() + " --out " + path("w.pt") + " --with-test-batch");
  const json j = read_json(path("w.json"));
  EXPECT_EQ(j["weights"], "w.pt");
  EXPECT_EQ(j["test_batch"], "w.test.pt");
  EXPECT_EQ(j["source"]["step"], 100);
  EXPECT_EQ(j["source"]["ema_rate"], 0.9) << "the config's first EMA rate is the default";
  EXPECT_EQ(j["model"]["in_channels"], 1);
  EXPECT_EQ(j["model"]["image_size"], 8);
  EXPECT_EQ(j["model"]["out_channels"], 2);
  EXPECT_EQ(j["model"]["use_checkpoint"], false);  // gradient checkpointing, off by default
  const json& id = j["improved_diffusion"];
  EXPECT_EQ(id["flags"]["num_channels"], 32);
  EXPECT_EQ(id["flags"]["attention_resolutions"], "4");
  EXPECT_EQ(id["flags"]["learn_sigma"], true);
  EXPECT_EQ(id["flags"]["diffusion_steps"], 40);
  EXPECT_EQ(id["flags"]["noise_schedule"], "linear");
  // One gray channel at 8 px: improved-diffusion's create_model cannot build it.
  EXPECT_EQ(id["can_sample"], false);
  EXPECT_TRUE(id["image_sample"].is_null());
  std::set<std::string> keys;
  for (const auto& u : id["not_expressible"])
    keys.insert(u["key"].get<std::string>());
  EXPECT_EQ(keys, (std::set<std::string>{"model.in_channels", "model.image_size"}));

  // The vector: x, t = timesteps * 1000 / 40, and the EMA model's output for them.
  std::map<std::string, at::Tensor> v;
  for (const auto& [name, t] : difftrain::weights::load_pt(path("w.test.pt")))
    v[name] = t;
  EXPECT_EQ(v.size(), 4u) << "x, timesteps, t, out: no labels for an unconditional model";
  EXPECT_TRUE(torch::equal(v["t"], torch::tensor({0.f, 325.f, 650.f, 975.f})));
  auto net = weights_of(checkpoint(), 0.9);
  net->eval();
  torch::NoGradGuard no_grad;
  // Within float32 rounding of the output's scale: the export ran in another process, with
  // another thread count, and oneDNN's reductions round differently (1.3e-6 apart was seen on an
  // AVX2 machine, at outputs near 0, where a tolerance relative to each element is too tight).
  const at::Tensor out = net->forward(v["x"], v["t"]);
  const double scale = v["out"].abs().max().item<double>();
  EXPECT_LT((out - v["out"]).abs().max().item<double>(), 1e-5 * scale) << "scale " << scale;
  EXPECT_GT(v["out"].abs().max().item<float>(), 1e-2) << "an output that says something";
}

TEST_F(ExportImport, PyTorchUNetLoadsTheExportStrictlyAndReproducesTheVector) {
  std::string triples;
  const std::map<std::string, std::string> checkpoints{{"gray", checkpoint()},
                                                       {"rgb", path("cond.pt")},
                                                       {"cfg", path("guided.pt")},
                                                       {"gd", path("gd_ckpt.pt")}};
  for (const std::string model : {"gray", "rgb", "cfg", "gd"})
    for (const std::string ext : {"pt", "safetensors"}) {
      const std::string out = path(model + "." + ext);
      const std::string& ckpt = checkpoints.at(model);
      run_ok("export --checkpoint " + ckpt + " --with-test-batch --out " + out);
      for (const std::string& file : {path(model + ".json"), out, path(model + ".test." + ext)})
        triples.append(" ").append(file);
    }
  const json results = python("forward" + triples);
  ASSERT_EQ(results.size(), 8u) << triples;
  for (const json& r : results) {
    EXPECT_LT(r["max_abs_diff"].get<double>(), 1e-5) << r;
    EXPECT_GT(r["max_abs_out"].get<double>(), 1e-2) << r;
    EXPECT_EQ(r["type"], "dict") << "a plain dict of tensors";
  }
  EXPECT_EQ(results[2]["shape"], json({4, 6, 8, 8})) << "the class-conditional RGB model";
  // The guidance model's JSON says it has the null label, and improved-diffusion's flags cannot.
  const json cfg = read_json(path("cfg.json"));
  EXPECT_EQ(cfg["model"]["null_class"], true);
  EXPECT_EQ(read_json(path("rgb.json"))["model"]["null_class"], false);
  bool flagged = false;
  for (const auto& u : cfg["improved_diffusion"]["not_expressible"])
    flagged |= u["key"] == "training.p_uncond";
  EXPECT_TRUE(flagged) << cfg["improved_diffusion"].dump();
  // The guided-diffusion model: its JSON has both options, which improved-diffusion cannot build.
  const json gd = read_json(path("gd.json"));
  EXPECT_EQ(gd["model"]["resblock_updown"], true);
  EXPECT_EQ(gd["model"]["use_new_attention_order"], true);
  std::set<std::string> keys;
  for (const auto& u : gd["improved_diffusion"]["not_expressible"])
    keys.insert(u["key"].get<std::string>());
  EXPECT_TRUE(keys.count("model.resblock_updown") && keys.count("model.use_new_attention_order"))
      << gd["improved_diffusion"].dump();
}

TEST_F(ExportImport, PythonSafetensorsReadsTheSameTensors) {
  run_ok("export --checkpoint " + path("cond.pt") + " --with-test-batch --out " + path("a.pt"));
  run_ok("export --checkpoint " + path("cond.pt") +
         " --with-test-batch --format safetensors --out " + path("a"));
  const json weights = python("compare-safetensors " + path("a.safetensors") + " " + path("a.pt"));
  EXPECT_EQ(weights["same"], true);
  EXPECT_EQ(weights["tensors"], difftrain::weights::load_pt(path("a.pt")).size());
  EXPECT_EQ(weights["metadata"]["format"], "pt");
  EXPECT_EQ(weights["metadata"]["step"], "100");
  const json batch =
      python("compare-safetensors " + path("a.test.safetensors") + " " + path("a.test.pt"));
  EXPECT_EQ(batch["same"], true) << "x, timesteps, t, y (int64) and out";
  EXPECT_EQ(batch["tensors"], 5);
}

TEST_F(ExportImport, AStateDictSavedByPyTorchImportsToTheSameOutputs) {
  // The model's description, from an export of the conditional config.
  run_ok("export --checkpoint " + path("cond.pt") + " --out " + path("d.pt"));
  // fp32, fp16, and fp32 in the legacy (pre-1.6) format, as the older published files are.
  const json written = python("write-state-dict " + path("d.json") + " 7 " + path("fp32.pt") + " " +
                              path("fp16.pt") + " " + path("legacy.pt"));
  EXPECT_EQ(written["type"], "OrderedDict");
  EXPECT_EQ(written["metadata"], true) << "as model.state_dict() is";
  std::string triples;
  for (const std::string dtype : {"fp32", "fp16", "legacy"}) {
    const ProcessResult r =
        difftrain_cli("import --weights " + path(dtype + ".pt") + " --config " + path("rgb.yaml") +
                      " --out " + path(dtype + "_imported.pt"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::string converted =
        "converted " + written["tensors"].dump() + " Half tensor(s) to Float";
    EXPECT_EQ(r.output.find(converted) != std::string::npos, dtype == "fp16") << r.output;
    // difftrain's output for the imported weights, against PyTorch's for its own file.
    const ProcessResult e = difftrain_cli("export --checkpoint " + path(dtype + "_imported.pt") +
                                          " --with-test-batch --out " + path(dtype + "_back.pt"));
    ASSERT_EQ(e.exit_code, 0) << e.output;
    EXPECT_EQ(e.output.find("close to the initial"), std::string::npos)
        << "imported weights are not initial ones, whatever the step:\n"
        << e.output;
    triples += " " + path(dtype + "_back.json") + " " + path(dtype + ".pt") + " " +
               path(dtype + "_back.test.pt");
  }
  const json results = python("forward" + triples);
  ASSERT_EQ(results.size(), 3u);
  for (const json& f : results) {
    EXPECT_LT(f["max_abs_diff"].get<double>(), 1e-5) << f;
    EXPECT_GT(f["max_abs_out"].get<double>(), 1e-2) << f;
    EXPECT_EQ(f["type"], "OrderedDict");
  }
}

// A guided-diffusion-style state dict (up / down ResBlocks, the new attention order) saved by
// PyTorch imports with a config that sets both options, and gives PyTorch's outputs.
TEST_F(ExportImport, AGuidedDiffusionStateDictImportsToTheSameOutputs) {
  run_ok("export --checkpoint " + path("gd_ckpt.pt") + " --out " + path("gd_d.pt"));
  expect_pytorch_state_dict_imports("gd", path("gd_d.json"), path("gd.yaml"), 8);
  // Without the options the same weights do not load: the names differ.
  const ProcessResult r = difftrain_cli("import --weights " + path("gd32.pt") + " --config " +
                                        path("gray.yaml") + " --out " + path("x.pt"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

// guided-diffusion's 512 px models start at half of model_channels (channel_mult 0.5, ...): the
// stem, the first level and the output convolution have int(0.5 * model_channels) channels. A state
// dict PyTorch saved for such a model imports and gives PyTorch's outputs.
TEST_F(ExportImport, AFractionalChannelMultImportsToTheSameOutputs) {
  std::stringstream gd_yaml;
  gd_yaml << std::ifstream(path("gd.yaml")).rdbuf();
  std::string yaml = gd_yaml.str();
  for (const auto& [from, to] :
       {std::pair<std::string, std::string>{"model_channels: 32", "model_channels: 64"},
        {"channel_mult: [1, 2]", "channel_mult: [0.5, 1]"}}) {
    ASSERT_NE(yaml.find(from), std::string::npos) << yaml;
    yaml.replace(yaml.find(from), from.size(), to);
  }
  std::ofstream(path("half.yaml")) << yaml;
  difftrain::testing::write_tiny_checkpoint(path("half_ckpt.pt"), yaml, yaml);
  run_ok("export --checkpoint " + path("half_ckpt.pt") + " --out " + path("half_d.pt"));
  const json model = read_json(path("half_d.json"))["model"];
  EXPECT_EQ(model["channel_mult"], json::parse("[0.5, 1]"));
  expect_pytorch_state_dict_imports("half", path("half_d.json"), path("half.yaml"), 8);
  const auto net = weights_of(path("half_imported.pt"), std::nullopt);
  EXPECT_EQ(net->named_parameters()["input_blocks.0.0.weight"].size(0), 32);
  EXPECT_EQ(net->named_parameters()["out.2.weight"].size(1), 32);
}

// An upsampler (model.low_res_size) is guided-diffusion's SuperResModel: PyTorch's, loading the
// export strictly, reproduces the test batch (which carries the low-res images), and a state dict
// PyTorch saved for it imports to PyTorch's outputs. improved-diffusion describes it by large_size
// and small_size.
TEST_F(ExportImport, AnUpsamplerIsPyTorchsSuperResModel) {
  std::string yaml = difftrain::testing::tiny_config_yaml(path("rgb/manifest.json"), 0, true);
  const std::string heads = "  num_heads: 1\n";
  yaml.replace(yaml.find(heads), heads.size(), heads + "  low_res_size: 4\n");
  std::ofstream(path("up.yaml")) << yaml;
  difftrain::testing::write_tiny_checkpoint(path("up_ckpt.pt"), yaml, yaml);
  run_ok("export --checkpoint " + path("up_ckpt.pt") + " --with-test-batch --out " + path("up.pt"));
  const json exported = read_json(path("up.json"));
  EXPECT_EQ(exported["model"]["low_res_size"], 4);
  EXPECT_EQ(exported["improved_diffusion"]["flags"]["large_size"], 8);
  EXPECT_EQ(exported["improved_diffusion"]["flags"]["small_size"], 4);
  EXPECT_FALSE(exported["improved_diffusion"]["flags"].contains("image_size"));
  const auto batch = difftrain::weights::load_pt(path("up.test.pt"));
  bool has_low_res = false;
  for (const auto& [name, t] : batch)
    if (name == "low_res") {
      has_low_res = true;
      EXPECT_EQ(t.sizes(), (std::vector<int64_t>{4, 3, 4, 4}));
    }
  EXPECT_TRUE(has_low_res);

  const json results =
      python("forward " + path("up.json") + " " + path("up.pt") + " " + path("up.test.pt"));
  ASSERT_EQ(results.size(), 1u);
  EXPECT_LT(results[0]["max_abs_diff"].get<double>(), 1e-5) << results[0];
  EXPECT_GT(results[0]["max_abs_out"].get<double>(), 1e-2) << results[0];
  expect_pytorch_state_dict_imports("up", path("up.json"), path("up.yaml"), 9);
  // A plain model's config does not take the upsampler's weights: its stem has 3 input channels.
  const ProcessResult r = difftrain_cli("import --weights " + path("up32.pt") + " --config " +
                                        path("rgb.yaml") + " --out " + path("x.pt"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("input_blocks.0.0.weight"), std::string::npos) << r.output;
}

// guided-diffusion's noisy classifier, saved by PyTorch (bench/baseline's EncoderUNetModel, with
// attention pooling and up / down ResBlocks), imports with `--classifier` and gives PyTorch's
// logits; `sample --classifier` takes the imported checkpoint.
TEST_F(ExportImport, AGuidedDiffusionClassifierImportsToTheSameLogits) {
  namespace tr = difftrain::train;
  for (const std::string pool : {"attention", "adaptive"}) {
    std::ofstream(path(pool + ".json")) << json{
        {"in_channels", 1},
        {"model_channels", 32},
        {"out_channels", 3},
        {"num_res_blocks", 1},
        {"attention_resolutions", {4}},
        {"image_size", 8},
        {"channel_mult", {1, 2}},
        {"num_head_channels", 32},
        {"use_scale_shift_norm", true},
        {"resblock_updown", true},
        {"pool", pool}}.dump();
    const json written = python("write-classifier " + path(pool + ".json") + " 9 " +
                                path(pool + "_sd.pt") + " " + path(pool + "_batch.pt"));
    EXPECT_GT(written["max_abs_out"].get<double>(), 1e-2) << written;
    // The classifier's config as a published one is described: sized without data.
    std::ofstream(path(pool + ".yaml"))
        << "data: {train: not/needed.json, class_conditional: true}\n"
           "model: {image_size: 8, in_channels: 1, num_classes: 3, model_channels: 32,"
           " channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [4],"
           " num_head_channels: 32, use_scale_shift_norm: true, resblock_updown: true, pool: " +
               pool +
               "}\n"
               "diffusion: {schedule: linear, steps: 40, rescale_timesteps: false}\n";
    run_ok("import --classifier --weights " + path(pool + "_sd.pt") + " --config " +
           path(pool + ".yaml") + " --out " + path(pool + "_imported.pt"));

    const tr::CheckpointInfo info = tr::read_checkpoint_info(path(pool + "_imported.pt"));
    EXPECT_EQ(info.kind, "classifier");
    EXPECT_EQ(info.imported_from, path(pool + "_sd.pt"));
    const tr::Config c = tr::parse_config(info.config_yaml);
    difftrain::model::EncoderUNet net(tr::classifier_unet_config(c, tr::data_shape(c, nullptr)),
                                      c.model.pool);
    tr::load_model_weights(path(pool + "_imported.pt"), *net);
    const auto batch = difftrain::weights::load_pt(path(pool + "_batch.pt"));
    const auto find = [&](const std::string& name) {
      for (const auto& [key, t] : batch)
        if (key == name) return t;
      return at::Tensor();
    };
    torch::NoGradGuard no_grad;
    const at::Tensor logits = net->forward(find("x"), find("t"));
    EXPECT_TRUE(at::allclose(logits, find("out"), 1e-5, 1e-5))
        << pool << ": max difference " << (logits - find("out")).abs().max().item<double>();
  }
  // The imported classifier guides the tiny model of the same shape and forward process.
  run_ok("sample --checkpoint " + checkpoint() + " --num 2 --steps 3 --classifier " +
         path("attention_imported.pt") + " --classifier-scale 2 --out " + path("guided"));
  // Without --classifier the weights are not a UNet's: the names differ.
  const ProcessResult r =
      difftrain_cli("import --weights " + path("attention_sd.pt") + " --config " +
                    path("gray.yaml") + " --out " + path("x.pt"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

// Expects `module`'s parameters to have the names and shapes of `expected` (name -> shape, as
// pytorch_side.py's *-shapes commands print them); returns their number of elements.
int64_t expect_state_dict_shapes(torch::nn::Module& module, const json& expected) {
  std::map<std::string, std::vector<int64_t>> ours;
  int64_t count = 0;
  for (const auto& p : module.named_parameters()) {
    ours[p.key()] = p.value().sizes().vec();
    count += p.value().numel();
  }
  EXPECT_EQ(ours.size(), expected.size());
  for (const auto& [name, shape] : expected.items()) {
    EXPECT_TRUE(ours.count(name)) << name << " missing";
    if (ours.count(name)) {
      EXPECT_EQ(ours[name], shape.get<std::vector<int64_t>>()) << name;
    }
  }
  return count;
}

// `model-info` of a config (--classifier for a classifier): its parts add up to its total, which
// is returned.
int64_t model_info_total(const std::string& args) {
  const ProcessResult info = difftrain_cli("model-info " + args);
  EXPECT_EQ(info.exit_code, 0) << info.output;
  std::istringstream lines(info.output);
  int64_t parts = 0, total = 0;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    std::string part;
    int64_t n = 0;
    if (!(fields >> part >> n)) continue;
    (part == "total" ? total : parts) += n;
  }
  EXPECT_EQ(parts, total) << info.output;
  return total;
}

// A released guided-diffusion network: its config in configs/, and its model as guided-diffusion's
// flags give it, in the fields of bench/baseline's model_from_difftrain (written out here from the
// flags, not from the config).
struct ReleasedModel {
  std::string config;
  json model;
  int64_t parameters;
};

// configs/guided_diffusion_*.yaml build the networks whose state dicts have the names and shapes
// of guided-diffusion's released models, as bench/baseline's PyTorch model with each one's flags
// has them: their weights import name for name. The parameter counts are the paper's 296M, 422M,
// 554M and 559M.
TEST_F(ExportImport, TheReleasedModelsConfigsHaveTheirStateDicts) {
  namespace tr = difftrain::train;
  const json common{
      {"in_channels", 3},       {"out_channels", 6},       {"attention_resolutions", {32, 16, 8}},
      {"dropout", 0.0},         {"conv_resample", true},   {"num_classes", 1000},
      {"num_heads", 4},         {"num_head_channels", -1}, {"use_scale_shift_norm", true},
      {"resblock_updown", true}};
  const auto with = [&](json fields) {
    json m = common;
    m.update(fields);
    return m;
  };
  const std::vector<ReleasedModel> released{{"guided_diffusion_64x64.yaml",
                                             with({{"image_size", 64},
                                                   {"model_channels", 192},
                                                   {"num_res_blocks", 3},
                                                   {"channel_mult", {1, 2, 3, 4}},
                                                   {"num_head_channels", 64},
                                                   {"use_new_attention_order", true}}),
                                             295'904'454},
                                            {"guided_diffusion_128x128.yaml",
                                             with({{"image_size", 128},
                                                   {"model_channels", 256},
                                                   {"num_res_blocks", 2},
                                                   {"channel_mult", {1, 1, 2, 3, 4}}}),
                                             421'529'606},
                                            {"guided_diffusion_256x256.yaml",
                                             with({{"image_size", 256},
                                                   {"model_channels", 256},
                                                   {"num_res_blocks", 2},
                                                   {"channel_mult", {1, 1, 2, 2, 4, 4}},
                                                   {"num_head_channels", 64}}),
                                             553'838'086},
                                            {"guided_diffusion_64_256_upsampler.yaml",
                                             with({{"image_size", 256},
                                                   {"model_channels", 192},
                                                   {"num_res_blocks", 2},
                                                   {"channel_mult", {1, 1, 2, 2, 4, 4}},
                                                   {"low_res_size", 64}}),
                                             311'795'910},
                                            {"guided_diffusion_512x512.yaml",
                                             with({{"image_size", 512},
                                                   {"model_channels", 256},
                                                   {"num_res_blocks", 2},
                                                   {"channel_mult", {0.5, 1, 1, 2, 2, 4, 4}},
                                                   {"num_head_channels", 64}}),
                                             558'997'638},
                                            {"guided_diffusion_128_512_upsampler.yaml",
                                             with({{"image_size", 512},
                                                   {"model_channels", 192},
                                                   {"num_res_blocks", 2},
                                                   {"channel_mult", {1, 1, 2, 2, 4, 4}},
                                                   {"attention_resolutions", {32, 16}},
                                                   {"num_head_channels", 64},
                                                   {"low_res_size", 128}}),
                                             308'835'270}};
  for (const ReleasedModel& r : released) {
    SCOPED_TRACE(r.config);
    const std::string model_json = path(r.config + ".json");
    std::ofstream(model_json) << r.model.dump();
    const json expected = python("model-shapes " + model_json);
    const std::string config = std::string(DIFFTRAIN_SOURCE_DIR) + "/configs/" + r.config;
    const tr::Config c = tr::load_config(config);
    int64_t count = 0;
    {
      difftrain::model::UNet net(tr::unet_config(c, tr::data_shape(c, nullptr)));
      count = expect_state_dict_shapes(*net, expected);
      const auto params = net->named_parameters();
      if (r.model.contains("low_res_size")) {  // the stem sees x and the upsampled image
        EXPECT_EQ(params["input_blocks.0.0.weight"].sizes().vec(),
                  (std::vector<int64_t>{192, 6, 3, 3}));
      }
      if (r.model["channel_mult"][0] == 0.5) {  // guided-diffusion: int(0.5 * 256) = 128 at 512 px
        EXPECT_EQ(params["input_blocks.0.0.weight"].sizes().vec(),
                  (std::vector<int64_t>{128, 3, 3, 3}));
        EXPECT_EQ(params["out.2.weight"].sizes().vec(), (std::vector<int64_t>{6, 128, 3, 3}));
      }
    }
    EXPECT_EQ(count, r.parameters);
    EXPECT_EQ(model_info_total("--config " + config), count);
  }
  const ProcessResult info =
      difftrain_cli("model-info --config " + std::string(DIFFTRAIN_SOURCE_DIR) +
                    "/configs/guided_diffusion_64_256_upsampler.yaml");
  EXPECT_NE(info.output.find("1000 classes, an upsampler from 3x64x64"), std::string::npos)
      << info.output;
}

// configs/guided_diffusion_*_classifier.yaml likewise build guided-diffusion's released
// classifiers (depth 4 at 64 px, 2 at 128, 256 and 512 px; 64 channels at 512 px's full
// resolution).
TEST_F(ExportImport, TheReleasedClassifiersConfigsHaveTheirStateDicts) {
  namespace tr = difftrain::train;
  const std::vector<ReleasedModel> released{
      {"guided_diffusion_64x64_classifier.yaml",
       {{"image_size", 64}, {"num_res_blocks", 4}, {"channel_mult", {1, 2, 3, 4}}},
       65'438'568},
      {"guided_diffusion_128x128_classifier.yaml",
       {{"image_size", 128}, {"num_res_blocks", 2}, {"channel_mult", {1, 1, 2, 3, 4}}},
       42'568'040},
      {"guided_diffusion_256x256_classifier.yaml",
       {{"image_size", 256}, {"num_res_blocks", 2}, {"channel_mult", {1, 1, 2, 2, 4, 4}}},
       54'096'360},
      {"guided_diffusion_512x512_classifier.yaml",
       {{"image_size", 512}, {"num_res_blocks", 2}, {"channel_mult", {0.5, 1, 1, 2, 2, 4, 4}}},
       54'448'360}};
  for (const ReleasedModel& r : released) {
    SCOPED_TRACE(r.config);
    json model{{"in_channels", 3},        {"model_channels", 128},
               {"out_channels", 1000},    {"attention_resolutions", {32, 16, 8}},
               {"num_head_channels", 64}, {"use_scale_shift_norm", true},
               {"resblock_updown", true}, {"pool", "attention"}};
    model.update(r.model);
    const std::string classifier_json = path(r.config + ".json");
    std::ofstream(classifier_json) << model.dump();
    const json expected = python("classifier-shapes " + classifier_json);
    const std::string config = std::string(DIFFTRAIN_SOURCE_DIR) + "/configs/" + r.config;
    const tr::Config c = tr::load_config(config);
    difftrain::model::EncoderUNet net(tr::classifier_unet_config(c, tr::data_shape(c, nullptr)),
                                      c.model.pool);
    const int64_t count = expect_state_dict_shapes(*net, expected);
    EXPECT_EQ(count, r.parameters);
    EXPECT_EQ(model_info_total("--classifier --config " + config), count);
  }
  const ProcessResult info =
      difftrain_cli("model-info --classifier --config " + std::string(DIFFTRAIN_SOURCE_DIR) +
                    "/configs/guided_diffusion_64x64_classifier.yaml");
  EXPECT_NE(info.output.find("attention pooling"), std::string::npos) << info.output;
}

TEST_F(ExportImport, ReadsViewsOfOneStorageAndPythonsSafetensors) {
  python("write-shared-storage " + path("views.pt") + " " + path("py.safetensors") + " " +
         path("legacy_views.pt"));
  const auto pt = difftrain::weights::load_pt(path("views.pt"));
  ASSERT_EQ(pt.size(), 2u);
  const at::Tensor base = torch::arange(12, torch::kFloat).reshape({3, 4});
  EXPECT_EQ(pt[0].name, "view");
  EXPECT_TRUE(torch::equal(pt[0].tensor, base.slice(0, 1).slice(1, 0, 4, 2))) << pt[0].tensor;
  EXPECT_TRUE(torch::equal(pt[1].tensor, base));
  const auto st = difftrain::weights::load_safetensors(path("py.safetensors"));
  std::map<std::string, at::Tensor> m;
  for (const auto& [name, t] : st)
    m[name] = t;
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m["half"].scalar_type(), torch::kHalf);
  EXPECT_TRUE(torch::equal(m["half"], base.to(torch::kHalf)));
  EXPECT_TRUE(torch::equal(m["long"], torch::arange(5, torch::kLong)));

  // The legacy (pre-1.6) format: the view and its base share one storage there too, which comes
  // after the pickles.
  const auto legacy = difftrain::weights::load_pt(path("legacy_views.pt"));
  ASSERT_EQ(legacy.size(), 4u);
  EXPECT_EQ(legacy[0].name, "view");
  EXPECT_TRUE(torch::equal(legacy[0].tensor, base.slice(0, 1).slice(1, 0, 4, 2)))
      << legacy[0].tensor;
  EXPECT_TRUE(torch::equal(legacy[1].tensor, base));
  EXPECT_EQ(legacy[0].tensor.data_ptr<float>(), legacy[1].tensor.data_ptr<float>() + 4)
      << "one storage, as PyTorch wrote it";
  EXPECT_EQ(legacy[2].name, "half");
  EXPECT_TRUE(torch::equal(legacy[2].tensor, base.to(torch::kHalf)));
  EXPECT_EQ(legacy[3].name, "long");
  EXPECT_TRUE(torch::equal(legacy[3].tensor, torch::arange(5, torch::kLong)));
}

TEST_F(ExportImport, BadWeightFilesAreOneLineErrors) {
  python("write-bad-files " + path(""));
  run_ok("export --checkpoint " + checkpoint() + " --ema none --out " + path("w.pt"));
  run_ok("export --checkpoint " + path("cond.pt") + " --ema none --out " + path("cond_w.pt"));
  std::ifstream in(path("w.pt"), std::ios::binary);
  const std::string bytes{std::istreambuf_iterator<char>(in), {}};
  std::ofstream(path("truncated.pt"), std::ios::binary) << bytes.substr(0, bytes.size() / 2);

  const std::string gray = " --config " + path("gray.yaml") + " --out " + path("x.pt");
  const std::vector<std::pair<std::string, std::string>> cases{
      {"--weights " + path("legacy_truncated.pt") + gray,
       path("legacy_truncated.pt") + " (PyTorch's legacy format): ends early, in storage '"},
      {"--weights " + path("list.pt") + gray, path("list.pt") + ": holds a list, not a state dict"},
      {"--weights " + path("checkpoint.pt") + gray,
       "entry 'model' is a dict: a training checkpoint rather than a state dict? Save that entry "
       "alone: torch.save(ckpt['model'], 'weights.pt')"},
      {"--weights " + path("truncated.pt") + gray,
       path("truncated.pt") + ": not a complete PyTorch zip archive (truncated or corrupt?)"},
      {"--weights " + path("absent.pt") + gray, path("absent.pt") + ": cannot open"},
      {"--weights " + path("w.pt") + gray + " --set model.model_channels=64",
       "tensors do not fit the model the config builds: "},
      {"--weights " + path("w.pt") + gray + " --set model.num_res_blocks=2",
       "missing (input_blocks.2.0.in_layers.0.weight"},
      {"--weights " + path("cond_w.pt") + gray, "unexpected (label_emb.weight)"},
      {"--weights " + path("w.pt") + " --ema-weights " + path("list.pt") + gray,
       path("list.pt") + ": holds a list"}};
  for (const auto& [args, message] : cases) {
    const ProcessResult r = difftrain_cli("import " + args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << args << "\n" << r.output;
    EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << "one line:\n" << r.output;
  }
  // Neither writes over a run's training checkpoint (nor a file named like one).
  const std::string training_checkpoint = path("run") + "/checkpoints/ckpt_000000002.pt";
  const auto size_before = fs::file_size(checkpoint());
  for (const std::string& args :
       {"import --weights " + path("w.pt") + " --config " + path("gray.yaml") + " --out " +
            training_checkpoint,
        "export --checkpoint " + checkpoint() + " --ema none --out " + checkpoint()}) {
    const ProcessResult r = difftrain_cli(args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("named like a training checkpoint"), std::string::npos) << r.output;
  }
  EXPECT_EQ(fs::file_size(checkpoint()), size_before);
  EXPECT_TRUE(difftrain::train::checkpoint_problem(checkpoint()).empty());

  const ProcessResult mismatch = difftrain_cli("export --checkpoint " + checkpoint() +
                                               " --format pt --out " + path("a.safetensors"));
  EXPECT_EQ(mismatch.exit_code, 2);
  EXPECT_NE(mismatch.output.find("ends in .safetensors but --format is pt"), std::string::npos)
      << mismatch.output;
}

TEST_F(ExportImport, TrainResumesFromAnImportedCheckpointWithAFreshOptimizer) {
  run_ok("export --checkpoint " + checkpoint() + " --ema none --out " + path("w.pt"));
  run_ok("import --weights " + path("w.pt") + " --config " + path("gray.yaml") + " --out " +
         path("imported.pt"));
  const ProcessResult r = difftrain_cli(
      "train --config " + path("gray.yaml") + " --resume " + path("imported.pt") +
      " --set training.max_steps=2 --set training.checkpoint_every=2 --set logging.run_dir=" +
      path("finetune"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from " + path("imported.pt") + " at step 0"), std::string::npos)
      << r.output;
  const std::string after = path("finetune/checkpoints/ckpt_000000002.pt");
  ASSERT_TRUE(fs::exists(after)) << r.output;
  EXPECT_EQ(difftrain::train::read_checkpoint_info(after).step, 2);
  // Two AdamW steps from the imported weights: close to them, not equal.
  auto before = weights_of(path("imported.pt"), std::nullopt);
  auto trained = weights_of(after, std::nullopt);
  const auto pb = before->named_parameters();
  double moved = 0;
  for (const auto& p : trained->named_parameters())
    moved = std::max(moved, (p.value() - pb[p.key()]).abs().max().item<double>());
  EXPECT_GT(moved, 0.0);
  EXPECT_LT(moved, 1e-3) << "lr 1e-4: two Adam steps move a weight by about 2e-4";
}

}  // namespace
