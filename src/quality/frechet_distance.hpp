// The Fréchet distance between two Gaussians (Dowson & Landau 1982), FID's formula on Inception
// features (Heusel et al. 2017, eq. 6).
#pragma once

#include "quality/feature_statistics.hpp"

namespace difftrain::quality {

// ‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁Σ₂)^½), in float64. tr((Σ₁Σ₂)^½) is taken as
// Σ √λ over the eigenvalues λ of the symmetric Σ₁^½ Σ₂ Σ₁^½ (the same eigenvalues as Σ₁Σ₂), so a
// singular Σ (fewer images than features) needs no regularising offset. Throws
// std::invalid_argument when the dimensions differ.
double frechet_distance(const FeatureStatistics& a, const FeatureStatistics& b);

}  // namespace difftrain::quality
