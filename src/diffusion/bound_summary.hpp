// The full bound over a data set, from per-image terms computed batch by batch (and rank by
// rank): sums that add up, then means, the standard error of the total, and per-t curves.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "diffusion/bound.hpp"

namespace difftrain::diffusion {

// One float64 vector, [count, sum total, sum total^2, sum prior, sum vb[T], sum xstart_mse[T],
// sum mse[T]], on the device of the terms: add the vectors of batches (and all_reduce-sum those
// of ranks) before summarising.
at::Tensor bound_sums(const BoundTerms& terms);
// A zero vector to add into.
at::Tensor empty_bound_sums(long num_timesteps, const c10::Device& device);

struct BoundSummary {
  int64_t count = 0;               // images
  double total_bpd = 0;            // mean of L_T + sum_t L_t
  double total_bpd_stderr = 0;     // standard error of that mean (NaN for one image)
  double prior_bpd = 0;            // mean L_T
  double decoder_bpd = 0;          // mean L_0
  double terms_bpd = 0;            // mean sum_{t >= 1} L_t
  std::vector<double> vb;          // [T] mean L_t in bits/dim, ascending t
  std::vector<double> xstart_mse;  // [T]
  std::vector<double> mse;         // [T] L_simple (eps mse)
};

BoundSummary summarize_bound(const at::Tensor& sums, long num_timesteps);

}  // namespace difftrain::diffusion
