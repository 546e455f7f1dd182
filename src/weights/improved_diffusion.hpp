// improved-diffusion (Nichol & Dhariwal 2021) describes a model by the flags of its
// script_util.py (model_and_diffusion_defaults), from which its scripts build the UNet and the
// diffusion. This maps a difftrain config onto those flags and lists what they cannot express,
// so that exported weights say how to use them there.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/unet_config.hpp"
#include "train/config.hpp"

namespace difftrain::weights {

// A difftrain setting that improved-diffusion's flags cannot express.
struct Unexpressible {
  std::string key;        // the config key, e.g. "diffusion.schedule"
  std::string value;      // its value, as the config writes it
  std::string reason;     // what improved-diffusion does instead
  bool affects_sampling;  // false: it changed only how the model was trained
};

struct ImprovedDiffusionFlags {
  nlohmann::ordered_json flags;  // flag -> value, in model_and_diffusion_defaults' order
  std::vector<Unexpressible> unexpressible;
  // improved-diffusion builds this model and samples it as difftrain does.
  bool can_sample() const;
};

// `unet`: the UNet the config builds (its shape from the data).
ImprovedDiffusionFlags improved_diffusion_flags(const train::Config& config,
                                                const model::UNetConfig& unet);

// "python scripts/image_sample.py --model_path <weights> --image_size 32 ...": every model and
// diffusion flag, booleans as True / False (its str2bool reads them). An upsampler's is
// super_res_sample.py, with --base_samples BASE.npz for the base model's samples.
std::string image_sample_command(const ImprovedDiffusionFlags& f, const std::string& weights_path);

}  // namespace difftrain::weights
