#include "weights/model_json.hpp"

#include <cmath>

namespace difftrain::weights {
namespace {

// Whole multipliers as integers, as the PyTorch UNets' tuples hold them: (1, 2, 2, 2), and
// guided-diffusion's (0.5, 1, 1, 2, 2, 4, 4) at 512 px.
nlohmann::ordered_json multipliers(const std::vector<double>& channel_mult) {
  auto list = nlohmann::ordered_json::array();
  for (const double m : channel_mult)
    if (m == std::floor(m))
      list.push_back(static_cast<int64_t>(m));
    else
      list.push_back(m);
  return list;
}

}  // namespace

nlohmann::ordered_json model_json(const model::UNetConfig& u) {
  return {{"image_size", u.image_size},
          {"in_channels", u.in_channels},
          {"model_channels", u.model_channels},
          {"out_channels", u.out_channels},
          {"num_res_blocks", u.num_res_blocks},
          {"attention_resolutions", u.attention_resolutions},
          {"dropout", u.dropout},
          {"channel_mult", multipliers(u.channel_mult)},
          {"conv_resample", u.conv_resample},
          {"num_classes", u.num_classes},
          {"null_class", u.null_class},
          {"num_heads", u.num_heads},
          {"num_head_channels", u.num_head_channels},
          {"use_scale_shift_norm", u.use_scale_shift_norm},
          {"resblock_updown", u.resblock_updown},
          {"use_new_attention_order", u.use_new_attention_order},
          {"low_res_size", u.low_res_size},
          {"low_res_noise", u.low_res_noise},
          {"use_checkpoint", u.use_checkpoint}};
}

}  // namespace difftrain::weights
