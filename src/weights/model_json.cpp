#include "weights/model_json.hpp"

namespace difftrain::weights {

nlohmann::ordered_json model_json(const model::UNetConfig& u) {
  return {{"image_size", u.image_size},
          {"in_channels", u.in_channels},
          {"model_channels", u.model_channels},
          {"out_channels", u.out_channels},
          {"num_res_blocks", u.num_res_blocks},
          {"attention_resolutions", u.attention_resolutions},
          {"dropout", u.dropout},
          {"channel_mult", u.channel_mult},
          {"conv_resample", u.conv_resample},
          {"num_classes", u.num_classes},
          {"null_class", u.null_class},
          {"num_heads", u.num_heads},
          {"num_head_channels", u.num_head_channels},
          {"use_scale_shift_norm", u.use_scale_shift_norm},
          {"resblock_updown", u.resblock_updown},
          {"use_new_attention_order", u.use_new_attention_order},
          {"low_res_size", u.low_res_size},
          {"use_checkpoint", u.use_checkpoint}};
}

}  // namespace difftrain::weights
