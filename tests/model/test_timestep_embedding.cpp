#include <gtest/gtest.h>

#include <torch/torch.h>

#include "model/timestep_embedding.hpp"

namespace difftrain::model {
namespace {

// dim 8: half = 4, freq_i = 10000^(-i/4) = 1, 0.1, 0.01, 0.001; emb = [cos(t f_i), sin(t f_i)].
TEST(TimestepEmbedding, ClosedFormValues) {
  const auto emb = timestep_embedding(torch::tensor({0, 1, 250}, torch::kLong), 8);
  ASSERT_EQ(emb.sizes(), (std::vector<int64_t>{3, 8}));
  EXPECT_EQ(emb.scalar_type(), torch::kFloat);
  const auto expected = torch::tensor(
      {{1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0},
       // cos(1), cos(0.1), cos(0.01), cos(0.001), sin(1), sin(0.1), sin(0.01), sin(0.001)
       {0.5403023058681398, 0.9950041652780258, 0.9999500004166653, 0.9999995000000417,
        0.8414709848078965, 0.09983341664682815, 0.009999833334166664, 0.0009999998333333417},
       // cos(250), cos(25), cos(2.5), cos(0.25), sin(250), sin(25), sin(2.5), sin(0.25)
       {0.24098830528525864, 0.9912028118634736, -0.8011436155469337, 0.9689124217106447,
        -0.9705280195418053, -0.13235175009777303, 0.5984721441039564, 0.24740395925452294}},
      torch::kFloat);
  EXPECT_TRUE(torch::allclose(emb, expected, 1e-5, 1e-5)) << emb;
}

TEST(TimestepEmbedding, FractionalTimestepsAndOddDim) {
  // Respaced / continuous timesteps are floats; an odd dim gets a zero last column.
  const auto emb = timestep_embedding(torch::tensor({0.5}, torch::kDouble), 5);
  ASSERT_EQ(emb.sizes(), (std::vector<int64_t>{1, 5}));
  // half = 2: freqs 1, 0.01.
  const auto expected = torch::tensor(
      {{0.8775825618903728, 0.9999875000260416, 0.479425538604203, 0.004999979166692708, 0.0}},
      torch::kFloat);
  EXPECT_TRUE(torch::allclose(emb, expected, 1e-6, 1e-6)) << emb;
}

TEST(TimestepEmbedding, RejectsNon1dTimesteps) {
  EXPECT_THROW(timestep_embedding(torch::zeros({2, 1}), 8), std::invalid_argument);
}

}  // namespace
}  // namespace difftrain::model
