// The full variational bound in bits/dim of a loaded model on held-out images, as
// improved-diffusion's image_nll.py: L_T + sum_{t>=1} L_t + L_0 with one network evaluation per
// timestep per image and x_0 predictions clamped to [-1, 1]. The images are split across the
// ranks of a communicator and the sums reduced. Image i's noise is seeded by (seed, its index in
// the set) alone, so the result does not depend on the batch size or the number of ranks. Used by
// `eval` and by `phema --sweep`.
#pragma once

#include <cstdint>
#include <vector>

#include "cli/trained_model.hpp"
#include "data/canvas.hpp"
#include "data/manifest.hpp"
#include "diffusion/bound_summary.hpp"

namespace difftrain::parallel {
class Communicator;
}

namespace difftrain::cli {

// The images evaluated and where they sit in the model's (possibly padded) canvas.
struct EvalImages {
  data::Manifest manifest;
  std::vector<int64_t> indices;  // ascending indices into the set
  std::vector<int64_t> labels;   // of the whole set, for class-conditional models
  data::Canvas canvas;           // where the images sit in the model's input
};

// Every image of `manifest` (num = 0 or >= its size), or a random subset of `num` seeded by `seed`
// (a set may be sorted by class). Throws std::invalid_argument when the images do not fit the
// model (channels, size, labels).
EvalImages choose_eval_images(const data::Manifest& manifest, const TrainedModel& m, int64_t num,
                              uint64_t seed);

// The bits/dim of the images are averaged over the model's input dimensions: C x S x S after
// padding. The padding is a constant, so the bound divided by the real pixels' dimensions (C x H
// x W) instead is an upper bound on the NLL of the real pixels alone: their probability is at
// least their joint probability with that padding, whose NLL the bound bounds.
int64_t model_dims(const TrainedModel& m);
int64_t real_dims(const EvalImages& images);

struct BoundEvaluation {
  diffusion::BoundSummary summary;
  std::vector<double> image_bpd;  // each image's total, in the order of images.indices
};

// The bound's sums over this rank's share of the images, reduced over `comm`: every rank returns
// the result. `progress`: a running line on stderr.
BoundEvaluation evaluate_bound(const TrainedModel& m, const EvalImages& images, int64_t batch,
                               uint64_t seed, parallel::Communicator& comm, bool progress);

}  // namespace difftrain::cli
