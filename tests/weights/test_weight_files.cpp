// The weights room on its own: .pt and safetensors files written and read back (bits, names,
// order, dtypes), the bytes of the safetensors layout, broken files refused with the reason,
// strict loading into a UNet, improved-diffusion's flags for a config, the conformance batch.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/unet.hpp"
#include "train/config.hpp"
#include "train/setup.hpp"
#include "weights/conformance.hpp"
#include "weights/improved_diffusion.hpp"
#include "weights/pt_file.hpp"
#include "weights/safetensors_file.hpp"
#include "weights/state_dict.hpp"

namespace fs = std::filesystem;
namespace w = difftrain::weights;

namespace {

class WeightFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("difftrain_test_weights_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

// Names out of alphabetical order, several dtypes, a 0-d tensor and an empty one.
w::StateDict mixed_state() {
  torch::manual_seed(3);
  return {{"out.2.weight", torch::randn({2, 3, 3, 3})},
          {"input_blocks.0.0.bias", torch::randn({5}).to(torch::kHalf)},
          {"time_embed.0.weight", torch::randn({4, 2}).to(torch::kBFloat16)},
          {"steps", torch::tensor(int64_t{7})},
          {"mask", torch::tensor({true, false, true})},
          {"empty", torch::zeros({0, 4})},
          {"double", torch::randn({3}, torch::kDouble)}};
}

void expect_same(const w::StateDict& a, const w::StateDict& b) {
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].tensor.scalar_type(), b[i].tensor.scalar_type()) << a[i].name;
    EXPECT_EQ(a[i].tensor.sizes(), b[i].tensor.sizes()) << a[i].name;
    EXPECT_TRUE(torch::equal(a[i].tensor, b[i].tensor)) << a[i].name;
  }
}

std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

void write_bytes(const std::string& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const w::WeightsError& e) {
    return e.what();
  }
  return "(no error)";
}

difftrain::model::UNetConfig tiny_unet(int64_t model_channels = 32, int64_t num_classes = 0) {
  return {.image_size = 8,
          .in_channels = 3,
          .model_channels = model_channels,
          .out_channels = 6,
          .num_res_blocks = 1,
          .attention_resolutions = {4},
          .channel_mult = {1, 2},
          .num_classes = num_classes,
          .num_heads = 2};
}

TEST_F(WeightFiles, PtRoundTripKeepsNamesOrderDtypesAndBits) {
  const w::StateDict state = mixed_state();
  w::save_pt(state, path("a.pt"));
  expect_same(w::load_pt(path("a.pt")), state);
  EXPECT_FALSE(fs::exists(path("a.pt.tmp")));
}

TEST_F(WeightFiles, SafetensorsRoundTripKeepsNamesOrderDtypesAndBits) {
  const w::StateDict state = mixed_state();
  w::save_safetensors(state, path("a.safetensors"), {{"format", "pt"}});
  expect_same(w::load_safetensors(path("a.safetensors")), state);
}

TEST_F(WeightFiles, SafetensorsLayoutIsTheSpecifiedOne) {
  const w::StateDict state{{"b", torch::arange(3, torch::kFloat)},
                           {"a", torch::tensor({int64_t{-1}, int64_t{2}})}};
  w::save_safetensors(state, path("s.safetensors"), {{"format", "pt"}});
  const std::string bytes = read_bytes(path("s.safetensors"));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u) << "the data starts 8-byte aligned";
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["__metadata__"]["format"], "pt");
  EXPECT_EQ(header["b"]["dtype"], "F32");
  EXPECT_EQ(header["b"]["shape"], nlohmann::json({3}));
  EXPECT_EQ(header["b"]["data_offsets"], nlohmann::json({0, 12}));
  EXPECT_EQ(header["a"]["dtype"], "I64");
  EXPECT_EQ(header["a"]["data_offsets"], nlohmann::json({12, 28}));
  ASSERT_EQ(bytes.size(), 8 + n + 28);
  float b2 = 0;
  int64_t a0 = 0;
  std::memcpy(&b2, bytes.data() + 8 + n + 8, 4);
  std::memcpy(&a0, bytes.data() + 8 + n + 12, 8);
  EXPECT_EQ(b2, 2.0f);
  EXPECT_EQ(a0, -1) << "little-endian two's complement";
}

TEST_F(WeightFiles, BrokenFilesAreRefusedWithTheReason) {
  w::save_pt(mixed_state(), path("a.pt"));
  const std::string pt = read_bytes(path("a.pt"));
  write_bytes(path("half.pt"), pt.substr(0, pt.size() / 2));
  EXPECT_NE(error_of([&] { w::load_pt(path("half.pt")); }).find("truncated"), std::string::npos);

  // What torch.save wrote before PyTorch 1.6 starts with a pickled magic number; here nothing
  // follows it.
  write_bytes(path("legacy.pt"),
              std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e", 15));
  const std::string legacy = error_of([&] { w::load_pt(path("legacy.pt")); });
  EXPECT_NE(legacy.find(path("legacy.pt") + " (PyTorch's legacy format): "), std::string::npos)
      << legacy;
  EXPECT_NE(legacy.find("ends early (truncated?)"), std::string::npos) << legacy;

  write_bytes(path("text.pt"), "hello");
  EXPECT_NE(error_of([&] { w::load_pt(path("text.pt")); }).find("not a PyTorch weights file"),
            std::string::npos);
  EXPECT_NE(error_of([&] { w::load_pt(path("absent.pt")); }).find("cannot open"),
            std::string::npos);

  // A zip archive from torch.save whose pickle is a tuple, not a dict.
  const std::vector<char> tuple =
      torch::pickle_save(c10::ivalue::Tuple::create({torch::zeros({2})}));
  write_bytes(path("tuple.pt"), std::string(tuple.begin(), tuple.end()));
  const std::string not_dict = error_of([&] { w::load_pt(path("tuple.pt")); });
  EXPECT_NE(not_dict.find("holds a tuple, not a state dict"), std::string::npos) << not_dict;

  w::save_safetensors(mixed_state(), path("a.safetensors"));
  const std::string st = read_bytes(path("a.safetensors"));
  write_bytes(path("cut.safetensors"), st.substr(0, st.size() - 4));
  EXPECT_NE(error_of([&] { w::load_safetensors(path("cut.safetensors")); }).find("truncated"),
            std::string::npos);
  write_bytes(path("short.safetensors"), st.substr(0, 100));
  EXPECT_NE(error_of([&] { w::load_safetensors(path("short.safetensors")); }).find("truncated"),
            std::string::npos);
}

TEST_F(WeightFiles, StrictLoadNamesMissingUnexpectedAndMisshapedTensors) {
  difftrain::model::UNet net(tiny_unet());
  w::StateDict state = w::state_dict_of(*net);
  ASSERT_EQ(state.front().name, "time_embed.0.weight");
  state.erase(state.begin());                                      // missing
  state.push_back({"label_emb.weight", torch::zeros({10, 128})});  // unexpected
  state[0].tensor = torch::zeros({7});                             // mis-shaped
  const std::string name = state[0].name;
  const std::string e = error_of([&] { w::load_state_dict(*net, state, "f.pt"); });
  EXPECT_EQ(e.rfind("f.pt: ", 0), 0u) << e;
  EXPECT_NE(e.find("1 missing (time_embed.0.weight)"), std::string::npos) << e;
  EXPECT_NE(e.find("1 unexpected (label_emb.weight)"), std::string::npos) << e;
  EXPECT_NE(e.find(name + " is [7] in the file, [128] in the model"), std::string::npos) << e;
}

TEST_F(WeightFiles, StrictLoadConvertsHalfPrecision) {
  difftrain::model::UNet source(tiny_unet()), target(tiny_unet());
  w::StateDict half = w::state_dict_of(*source);
  for (auto& [name, t] : half)
    t = t.to(torch::kHalf);
  w::load_state_dict(*target, half, "half.pt");
  const auto params = target->named_parameters();
  for (const auto& [name, t] : half) {
    EXPECT_EQ(params[name].scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::equal(params[name], t.to(torch::kFloat))) << name;
  }
}

TEST_F(WeightFiles, ImprovedDiffusionFlagsOfTheCifar10HybridModel) {
  // The CIFAR-10 model of the Improved DDPM paper, as its README trains it.
  difftrain::train::Config c;
  c.model.model_channels = 128;
  c.model.num_res_blocks = 3;
  c.model.dropout = 0.3;
  c.diffusion.steps = 4000;
  c.diffusion.schedule = difftrain::diffusion::BetaSchedule::cosine;
  const auto unet = difftrain::train::unet_config(c, {32, 3, 0});
  const auto f = w::improved_diffusion_flags(c, unet);
  EXPECT_TRUE(f.unexpressible.empty()) << f.unexpressible.front().key;
  EXPECT_TRUE(f.can_sample());
  EXPECT_EQ(f.flags["image_size"], 32);
  EXPECT_EQ(f.flags["num_channels"], 128);
  EXPECT_EQ(f.flags["num_res_blocks"], 3);
  EXPECT_EQ(f.flags["attention_resolutions"], "16,8");
  EXPECT_EQ(f.flags["learn_sigma"], true);
  EXPECT_EQ(f.flags["noise_schedule"], "cosine");
  EXPECT_EQ(f.flags["diffusion_steps"], 4000);
  EXPECT_EQ(f.flags["rescale_learned_sigmas"], true) << "hybrid with vlb_weight 0.001";
  EXPECT_EQ(f.flags["class_cond"], false);
  EXPECT_EQ(w::image_sample_command(f, "my weights/ema.pt"),
            "python scripts/image_sample.py --model_path 'my weights/ema.pt' --image_size 32 "
            "--num_channels 128 --num_res_blocks 3 --num_heads 4 --num_heads_upsample -1 "
            "--attention_resolutions 16,8 --dropout 0.3 --learn_sigma True --sigma_small False "
            "--class_cond False --diffusion_steps 4000 --noise_schedule cosine --use_kl False "
            "--predict_xstart False --rescale_timesteps True --rescale_learned_sigmas True "
            "--use_scale_shift_norm True");
  EXPECT_EQ(f.flags["use_checkpoint"], false);

  // Gradient checkpointing is a training flag: in the flags, not in the sampling command.
  c.model.use_checkpoint = true;
  const auto checkpointed =
      w::improved_diffusion_flags(c, difftrain::train::unet_config(c, {32, 3, 0}));
  EXPECT_EQ(checkpointed.flags["use_checkpoint"], true);
  EXPECT_TRUE(checkpointed.unexpressible.empty());
  EXPECT_EQ(w::image_sample_command(checkpointed, "my weights/ema.pt"),
            w::image_sample_command(f, "my weights/ema.pt"));
}

// improved-diffusion's super-resolution scripts (sr_model_and_diffusion_defaults) describe an
// upsampler by large_size and small_size, and sr_create_model builds 64 and 256 pixels only.
TEST_F(WeightFiles, ImprovedDiffusionFlagsOfAnUpsampler) {
  difftrain::train::Config c;
  c.model.channel_mult = {1, 2, 3, 4};
  c.model.low_res_size = 16;
  const auto f = w::improved_diffusion_flags(c, difftrain::train::unet_config(c, {64, 3, 0}));
  EXPECT_TRUE(f.can_sample());
  EXPECT_EQ(f.flags.begin().key(), "large_size");
  EXPECT_EQ(f.flags["large_size"], 64);
  EXPECT_EQ(f.flags["small_size"], 16);
  EXPECT_FALSE(f.flags.contains("image_size"));
  EXPECT_EQ(
      w::image_sample_command(f, "up.pt")
          .rfind("python scripts/super_res_sample.py --base_samples BASE.npz --model_path up.pt "
                 "--large_size 64 --small_size 16 --num_channels 128",
                 0),
      0u)
      << w::image_sample_command(f, "up.pt");
  c.model.channel_mult = {1, 2, 2, 2};
  c.model.low_res_size = 8;
  const auto small = w::improved_diffusion_flags(c, difftrain::train::unet_config(c, {32, 3, 0}));
  ASSERT_FALSE(small.unexpressible.empty());
  EXPECT_EQ(small.unexpressible.front().key, "model.image_size");
  EXPECT_EQ(small.unexpressible.front().reason,
            "sr_create_model builds only 64 and 256 pixel upsamplers");
}

TEST_F(WeightFiles, ImprovedDiffusionFlagsListWhatTheyCannotExpress) {
  difftrain::train::Config c;
  c.diffusion.schedule = difftrain::diffusion::BetaSchedule::sigmoid;
  c.diffusion.zero_terminal_snr = true;
  c.diffusion.model_mean_type = difftrain::diffusion::ModelMeanType::v;
  c.diffusion.loss = difftrain::train::Loss::simple;
  c.diffusion.model_var_type = difftrain::diffusion::ModelVarType::fixed_small;
  c.diffusion.weighting = difftrain::diffusion::SimpleWeighting::min_snr;
  const auto unet = difftrain::train::unet_config(c, {32, 1, 0});
  const auto f = w::improved_diffusion_flags(c, unet);
  std::map<std::string, bool> listed;  // key -> affects sampling
  for (const auto& u : f.unexpressible)
    listed[u.key] = u.affects_sampling;
  EXPECT_EQ(listed, (std::map<std::string, bool>{{"model.in_channels", true},
                                                 {"diffusion.schedule", true},
                                                 {"diffusion.zero_terminal_snr", true},
                                                 {"diffusion.model_mean_type", true},
                                                 {"diffusion.weighting", false}}));
  EXPECT_FALSE(f.can_sample());
  EXPECT_EQ(f.flags["sigma_small"], true);
  EXPECT_EQ(f.flags["learn_sigma"], false);
  EXPECT_EQ(f.flags["rescale_learned_sigmas"], false) << "the simple loss is MSE";
}

TEST_F(WeightFiles, ConformanceBatchIsFixedAndIsTheNetworksOutput) {
  torch::manual_seed(0);
  difftrain::model::UNet net(tiny_unet(32, 3));
  net->eval();
  const difftrain::train::Denoiser denoiser{net, 25.0};
  const w::StateDict a = w::conformance_batch(denoiser, 40);
  const w::StateDict b = w::conformance_batch(denoiser, 40);
  std::map<std::string, at::Tensor> m;
  for (const auto& [name, t] : a)
    m[name] = t;
  EXPECT_EQ(a.size(), 5u);
  EXPECT_TRUE(torch::equal(m["x"], b[0].tensor)) << "the same input every time";
  EXPECT_EQ(m["x"].sizes(), (std::vector<int64_t>{4, 3, 8, 8}));
  EXPECT_TRUE(torch::equal(m["timesteps"], torch::tensor({0, 13, 26, 39}, torch::kLong)));
  EXPECT_TRUE(torch::equal(m["t"], torch::tensor({0.f, 325.f, 650.f, 975.f})));
  EXPECT_TRUE(torch::equal(m["y"], torch::tensor({0, 1, 2, 0}, torch::kLong)));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(m["out"], net->forward(m["x"], m["t"], m["y"])));
}

}  // namespace
