// Improved precision and recall (Kynkäänniemi et al. 2019) of a set of samples against a set of
// reference images, in FID's Inception features, as guided-diffusion's evaluator computes them
// (its ManifoldEstimator, k = 3). A set's manifold is the union of balls around its features,
// each ball's radius the distance to the k-th nearest other feature of the set. Precision is the
// share of samples inside the references' manifold (fidelity), recall the share of references
// inside the samples' manifold (variety).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace difftrain::quality {

// ‖a_i − b_j‖² [n, m] for features a [n, D] and b [m, D] (float32, one device), as
// ‖a‖² − 2 a·b + ‖b‖², clamped at 0: the evaluator's formula.
at::Tensor squared_distances(const at::Tensor& a, const at::Tensor& b);

// The squared ball radius of features rows [begin, end) of a set [n, D]: the (k+1)-th smallest
// squared distance to the whole set, the row's own (about 0) being the first, as the evaluator
// takes column k of its partition. Computed `rows` at a time; needs n > k.
at::Tensor manifold_radii(const at::Tensor& features, int64_t k, int64_t begin, int64_t end,
                          int64_t rows);

// Whether each query [q, D] lies in the manifold of `features` [n, D] with squared radii [n]:
// ‖query − f_j‖² <= radius_j for some j (bool [q]). Computed `rows` queries at a time.
at::Tensor in_manifold(const at::Tensor& queries, const at::Tensor& features,
                       const at::Tensor& radii, int64_t rows);

// Queries per distance block, so that a block of a set of n holds about 64 Mi floats.
int64_t distance_block_rows(int64_t n);

}  // namespace difftrain::quality
