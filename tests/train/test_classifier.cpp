// Classifier guidance's gradient: scale * grad log p(y | x_t) of the classifier, by autograd also
// inside InferenceMode (where `difftrain sample` runs), against central differences.
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "train/classifier.hpp"

namespace {

using namespace difftrain;

TEST(Classifier, GuidanceIsTheScaledGradientOfTheLabelsLogProbabilityEvenUnderInferenceMode) {
  torch::manual_seed(4);
  model::UNetConfig c{.image_size = 8,
                      .in_channels = 1,
                      .model_channels = 32,
                      .out_channels = 3,
                      .num_res_blocks = 1,
                      .attention_resolutions = {4},
                      .channel_mult = {1, 2},
                      .num_head_channels = 32};
  model::EncoderUNet net(c, model::Pool::attention);
  for (auto& p : net->parameters())  // no zero-initialised layer: every path carries a gradient
    p.data().normal_(0.0, 0.2);
  net->to(at::kDouble);
  net->eval();
  const train::Classifier classifier{net, 0.5};
  const at::Tensor x = at::randn({2, 1, 8, 8}, at::kDouble);
  const at::Tensor t = at::tensor({30, 700}, at::kLong);
  const at::Tensor y = at::tensor({2, 0}, at::kLong);

  at::Tensor grad;
  {
    c10::InferenceMode guard;
    const at::Tensor x_inference = x.clone();
    grad = classifier.guidance(y, 2.5)(x_inference, t);
  }
  ASSERT_EQ(grad.sizes(), x.sizes());
  ASSERT_EQ(grad.scalar_type(), at::kDouble);

  torch::NoGradGuard no_grad;
  const auto log_p = [&](const at::Tensor& xs) {
    return at::log_softmax(classifier.logits(xs, t), -1).gather(1, y.view({-1, 1})).squeeze(1);
  };
  for (const int64_t i : {0, 7, 35, 63}) {  // pixels of both samples
    const double h = 1e-5;
    at::Tensor up = x.clone(), down = x.clone();
    up.view({2, -1}).select(1, i) += h;
    down.view({2, -1}).select(1, i) -= h;
    const at::Tensor numeric = 2.5 * (log_p(up) - log_p(down)) / (2 * h);
    const at::Tensor analytic = grad.view({2, -1}).select(1, i);
    EXPECT_TRUE(at::allclose(analytic, numeric, 1e-5, 1e-7))
        << "pixel " << i << ": " << analytic << " vs " << numeric;
  }
  // The network saw t * timestep_scale: another scale is another gradient.
  const train::Classifier rescaled{net, 1.0};
  c10::InferenceMode guard;
  EXPECT_FALSE(at::allclose(rescaled.guidance(y, 2.5)(x.clone(), t), grad));
}

}  // namespace
