// The Inception Score (Salimans et al. 2016), IS = exp(E_x KL(p(y|x) || p(y))), as improved-gan's
// reference code computes it (and guided-diffusion's evaluator after it): p(y|x) the softmax of
// the FID network's 1008 logits without the head's bias, the set cut into S contiguous splits,
// p(y) the mean of p(y|x) over a split, and the mean and standard deviation of the S scores.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

namespace difftrain::quality {

// Per split, what its score needs, summed over its images so that batches and ranks combine:
// Σ p(y|x) and Σ Σ_y p(y|x) ln p(y|x) (the negative entropies), float64 on the logits' device.
struct ClassProbabilitySums {
  at::Tensor probability;  // [S, classes]
  at::Tensor negentropy;   // [S]
  at::Tensor count;        // [S]
  int64_t total = 0;       // the images of the whole set, which fix the splits' bounds

  // The logits [n, classes] of images first, first + 1, ... of the set.
  void add(const at::Tensor& logits, int64_t first);
};

// Sums of nothing yet, for a set of `total` images cut into `splits`.
ClassProbabilitySums zero_class_probability_sums(int64_t splits, int64_t classes, int64_t total,
                                                 const c10::Device& device);

// The split image i of n falls into: improved-gan's parts [s·n/S, (s+1)·n/S), integer division.
int64_t split_of(int64_t i, int64_t n, int64_t splits);

struct InceptionScore {
  double mean = 0;
  double std = 0;  // over the splits, NumPy's np.std (population)
  std::vector<double> splits;
};

// ln IS_s = (1/n_s) Σ_x Σ_y p ln p − Σ_y p̄ ln p̄: the entropy of the split's mean p(y) less the
// mean entropy of p(y|x). Throws std::invalid_argument when a split holds no image.
InceptionScore inception_score(const ClassProbabilitySums& sums);

}  // namespace difftrain::quality
