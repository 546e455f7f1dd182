// The fused AdamW step against LibTorch's own AdamW, its device-side skip, and the step count's
// checkpoint round trip.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "train/adamw.hpp"

namespace tr = difftrain::train;

namespace {

// A conv-like 4-D weight in channels_last (as with model.channels_last), a bias, and a parameter
// that gets no gradient (an unused layer).
std::vector<at::Tensor> make_params() {
  torch::manual_seed(3);
  std::vector<at::Tensor> p{at::randn({8, 4, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast),
                            at::randn({8}), at::randn({5})};
  for (auto& t : p)
    t.requires_grad_(true);
  return p;
}

void set_grads(const std::vector<at::Tensor>& params, int step) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(100 + step);
  for (std::size_t i = 0; i + 1 < params.size(); ++i)
    params[i].mutable_grad() =
        at::randn(params[i].sizes(), g).contiguous(params[i].suggest_memory_format());
}

std::vector<at::Tensor> clones(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts)
    out.push_back(t.detach().clone());
  return out;
}

// The optimizer's part of a checkpoint: `from` saved as checkpoints save it, loaded into `to`.
void checkpoint_round_trip(const tr::AdamW& from, tr::AdamW& to) {
  tr::write_step_count(from);
  torch::serialize::OutputArchive out;
  from.state->save(out);
  std::ostringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  std::istringstream read(bytes.str());
  in.load_from(read);
  to.state->load(in);
  tr::read_step_count(to);
}

}  // namespace

TEST(AdamW, FusedStepMatchesLibTorchAdamW) {
  auto ours = make_params(), theirs = clones(make_params());
  for (auto& t : theirs)
    t.requires_grad_(true);
  tr::AdamW fused = tr::make_adamw(ours, 1e-2, 0.1);
  torch::optim::AdamW reference(theirs, torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  for (int step = 0; step < 6; ++step) {
    const double lr = 1e-2 * (step + 1) / 6.0;  // a warm-up, as the trainer's schedule
    set_grads(ours, step);
    set_grads(theirs, step);
    for (auto& g : reference.param_groups())
      static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    tr::adamw_step(fused, lr, at::zeros({}));
    reference.step();
  }
  for (std::size_t i = 0; i < ours.size(); ++i)
    EXPECT_TRUE(at::allclose(ours[i], theirs[i], 1e-5, 1e-6)) << "parameter " << i;
  EXPECT_EQ(fused.steps.item<float>(), 6.0f);
  EXPECT_TRUE(at::equal(ours[2], make_params()[2]));  // no gradient: untouched
}

TEST(AdamW, SkipIsANoOpDecidedOnTheDevice) {
  auto params = make_params();
  tr::AdamW adam = tr::make_adamw(params, 1e-2, 0.1);
  set_grads(params, 0);
  tr::adamw_step(adam, 1e-2, at::zeros({}));
  const auto before = clones(params);
  const auto* s = static_cast<const torch::optim::AdamWParamState*>(
      adam.state->state().at(params[0].unsafeGetTensorImpl()).get());
  const at::Tensor exp_avg = s->exp_avg().clone(), exp_avg_sq = s->exp_avg_sq().clone();
  set_grads(params, 1);
  params[0].mutable_grad()[0][0][0][0] = NAN;  // what a skipped step looks like
  tr::adamw_step(adam, 1e-2, at::ones({}));
  for (std::size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(at::equal(params[i], before[i])) << "parameter " << i;
  EXPECT_TRUE(at::equal(s->exp_avg(), exp_avg));
  EXPECT_TRUE(at::equal(s->exp_avg_sq(), exp_avg_sq));
  EXPECT_EQ(adam.steps.item<float>(), 1.0f);
}

TEST(AdamW, StepCountSurvivesACheckpoint) {
  auto params = make_params();
  tr::AdamW adam = tr::make_adamw(params, 1e-2, 0.0);
  for (int step = 0; step < 3; ++step) {
    set_grads(params, step);
    tr::adamw_step(adam, 1e-2, at::zeros({}));
  }
  auto restored_params = clones(params);
  tr::AdamW restored = tr::make_adamw(restored_params, 1e-2, 0.0);
  checkpoint_round_trip(adam, restored);
  EXPECT_EQ(restored.steps.item<float>(), 3.0f);
  // The next step is the same on both: moments and bias corrections came through.
  set_grads(params, 3);
  set_grads(restored_params, 3);
  tr::adamw_step(adam, 1e-2, at::zeros({}));
  tr::adamw_step(restored, 1e-2, at::zeros({}));
  for (std::size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(at::equal(params[i], restored_params[i])) << "parameter " << i;
}

// A channels-first gradient of a channels-last weight would be walked with the weight's index:
// each weight updated with another element's gradient. Refused, naming the parameter.
TEST(AdamW, RefusesAGradientLaidOutUnlikeItsParameter) {
  auto params = make_params();
  tr::AdamW adam = tr::make_adamw(params, 1e-2, 0.0, {"conv.weight", "conv.bias", "unused"});
  set_grads(params, 0);
  params[0].mutable_grad() = params[0].grad().contiguous();  // NCHW memory, NHWC parameter
  ASSERT_FALSE(params[0].grad().is_contiguous(at::MemoryFormat::ChannelsLast));
  const auto before = clones(params);
  try {
    tr::adamw_step(adam, 1e-2, at::zeros({}));
    FAIL() << "a gradient of another layout was accepted";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("'conv.weight'"), std::string::npos) << e.what();
  }
  for (std::size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(at::equal(params[i], before[i])) << "parameter " << i;
}

// A checkpoint of a channels-first run resumed channels-last (fp32 resumed under bf16 with
// model.channels_last auto): the moments take the parameters' layout, and the next step equals
// the step of a run that was channels-last all along.
TEST(AdamW, MomentsTakeTheParameterLayoutAfterLoading) {
  std::vector<at::Tensor> first;
  for (const auto& p : make_params())
    first.push_back(p.detach().contiguous().requires_grad_(true));
  tr::AdamW adam = tr::make_adamw(first, 1e-2, 0.0);
  set_grads(first, 0);
  for (auto& p : first)
    if (p.grad().defined()) p.mutable_grad() = p.grad().contiguous();
  tr::adamw_step(adam, 1e-2, at::zeros({}));
  auto resumed = make_params();  // channels-last conv weight
  {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < resumed.size(); ++i)
      resumed[i].copy_(first[i]);
  }
  tr::AdamW restored = tr::make_adamw(resumed, 1e-2, 0.0);
  checkpoint_round_trip(adam, restored);
  const auto& s = static_cast<const torch::optim::AdamWParamState&>(
      *restored.state->state().at(resumed[0].unsafeGetTensorImpl()));
  EXPECT_TRUE(s.exp_avg().is_contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(s.exp_avg_sq().is_contiguous(at::MemoryFormat::ChannelsLast));

  set_grads(first, 1);
  for (auto& p : first)
    if (p.grad().defined()) p.mutable_grad() = p.grad().contiguous();
  set_grads(resumed, 1);
  tr::adamw_step(adam, 1e-2, at::zeros({}));
  tr::adamw_step(restored, 1e-2, at::zeros({}));
  for (std::size_t i = 0; i < first.size(); ++i)
    EXPECT_TRUE(at::allclose(first[i], resumed[i], 1e-6, 1e-7)) << "parameter " << i;
}
