// Sample grids while training (logging.sample_every): rank 0 draws logging.sample_num images with
// the first EMA's weights (the raw weights when the run keeps no EMA) by DPM-Solver++ in
// logging.sample_steps steps, and writes them as one PNG. Sample i has the seed
// `difftrain sample --seed <config seed>` gives it and the class i mod num_classes, so successive
// grids start from the same x_T and show the model change; `difftrain sample` on the step's
// checkpoint with those options draws the same images. An upsampler's grid upsamples held-out
// images (else training images) by ancestral (DDPM) sampling in logging.sample_steps steps.
#pragma once

#include <string>

#include "diffusion/schedule.hpp"
#include "train/config.hpp"
#include "train/setup.hpp"
#include "train/train_state.hpp"

namespace difftrain::train {

// The grid of step `step`: RUN_DIR/samples/step_000001000.png.
std::string sample_grid_path(const std::string& run_dir, int64_t step);

// Draws the grid and writes it to `path` (through a temporary file, so a kill leaves no
// half-written PNG). `diffusion` is the run's (un-respaced) diffusion on the network's device;
// `height` x `width` the stored images' size, which padded data (data.pad_to) is cropped back to.
// The network's weights and training mode are restored before it returns. Images of other than
// 1, 3 or 4 channels have no PNG: it warns and returns false.
bool write_sample_grid(TrainState& state, const Config& config, const DataShape& shape,
                       const diffusion::GaussianDiffusion& diffusion, int64_t height, int64_t width,
                       const std::string& path);

}  // namespace difftrain::train
