// The Gaussian FID fits to a set of images' features: their mean and covariance, accumulated as
// float64 sums so that batches and ranks combine exactly, and kept in pytorch-fid's statistics
// file (an .npz of mu and sigma).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <optional>
#include <string>

namespace difftrain::quality {

struct FeatureStatistics {
  at::Tensor mu;      // float64 [D], CPU
  at::Tensor sigma;   // float64 [D, D], CPU: the unbiased covariance (numpy.cov's)
  int64_t count = 0;  // images behind them; 0 when read from a file that does not say
};

// Σ f and Σ f fᵀ over the features added so far, on the features' device.
struct FeatureSums {
  at::Tensor sum;    // float64 [D]
  at::Tensor outer;  // float64 [D, D]
  int64_t count = 0;

  void add(const at::Tensor& features);  // [n, D], on the sums' device
};

// Sums of nothing yet, for D features on `device`.
FeatureSums zero_feature_sums(int64_t dims, const c10::Device& device);

// Mean and unbiased covariance of the summed features. Throws std::invalid_argument for fewer
// than 2 images.
FeatureStatistics statistics_of(const FeatureSums& sums);

// A set of images' statistics as a file holds them: FID's, and sFID's where it has them.
struct SetStatistics {
  FeatureStatistics pool3;
  std::optional<FeatureStatistics> spatial;
};

// pytorch-fid's --save-stats file: mu and sigma as float64 arrays of an .npz (and count, which
// it ignores), and the spatial features' as mu_s and sigma_s (guided-diffusion's names), written
// whole or not at all.
void write_statistics(const std::string& path, const SetStatistics& stats);

// An .npz with mu [D] and sigma [D, D] (float32 or float64), and mu_s and sigma_s if it has
// them: pytorch-fid's statistics, or guided-diffusion's reference batches, whose arr_0 images are
// then not needed. Throws std::invalid_argument naming the file when it holds no mu and sigma, or
// arrays of the wrong shapes.
SetStatistics read_statistics(const std::string& path);

// Whether an .npz holds statistics (mu and sigma) rather than only images.
bool holds_statistics(const std::string& path);

}  // namespace difftrain::quality
