// The hyper-parameters of improved-diffusion's UNetModel (Nichol & Dhariwal 2021), with
// guided-diffusion's additions, and their validation.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace difftrain::model {

struct UNetConfig {
  int64_t image_size = 0;
  int64_t in_channels = 0;
  int64_t model_channels = 0;
  int64_t out_channels = 0;  // 2 * in_channels when the variance is learned
  int64_t num_res_blocks = 0;
  // Image resolutions at which attention blocks follow the ResBlocks, e.g. {16, 8}. (The
  // improved-diffusion scripts take resolutions too and turn them into downsample rates.)
  std::vector<int64_t> attention_resolutions;
  double dropout = 0.0;
  // One multiplier of model_channels per resolution level. guided-diffusion's 512 px models start
  // at 0.5; every level's model_channels * mult must be a whole number of channels.
  std::vector<double> channel_mult;
  bool conv_resample = true;  // strided / post-upsampling convs, else pooling only
  int64_t num_classes = 0;    // 0 = unconditional
  // Classifier-free guidance's null label: label_emb gets one more row, label num_classes, for
  // "no class" (training.p_uncond > 0). Needs num_classes > 0.
  bool null_class = false;
  int64_t num_heads = 4;
  int64_t num_head_channels = -1;  // channels per head; overrides num_heads unless -1
  bool use_scale_shift_norm = true;
  // guided-diffusion's (Dhariwal & Nichol 2021) two architecture options, both off in
  // improved-diffusion: ResBlocks that down- and upsample between levels in place of Downsample /
  // Upsample, and QKVAttention's split of q, k, v before the heads.
  bool resblock_updown = false;
  bool use_new_attention_order = false;
  // An upsampler (guided-diffusion's SuperResModel): > 0 makes the model also take a low-resolution
  // image [N, in_channels, low_res_size, low_res_size], bilinearly upsampled to x's size and
  // concatenated to x, so the first convolution sees 2 * in_channels. 0 = an ordinary model.
  int64_t low_res_size = 0;
  // Noise conditioning augmentation (Ho et al. 2022, "Cascaded Diffusion Models"; Imagen): an
  // upsampler whose low-resolution image was noised to a level of the diffusion's own forward
  // process, a timestep, is told that level. It is embedded as the timestep is, by an MLP of its
  // own (low_res_noise_embed), and added to the timestep embedding. Needs low_res_size > 0.
  bool low_res_noise = false;
  // Gradient checkpointing (improved-diffusion's use_checkpoint): ResBlocks and attention blocks
  // keep no activations for backward and compute them again there, about a third more compute
  // for a fraction of the activation memory. The parameters and outputs are the same.
  bool use_checkpoint = false;
};

// How guided-diffusion's classifier (EncoderUNet, encoder_unet.hpp) turns its last feature map
// into logits (its `pool`):
//   adaptive   global average, then a zero-initialised conv1x1 to the classes
//   attention  CLIP's attention pooling: the mean position, with a learned positional embedding,
//              attends to all positions (the pool of guided-diffusion's released classifiers)
enum class Pool { adaptive, attention };
// "adaptive" or "attention"; std::invalid_argument listing them otherwise.
Pool parse_pool(std::string_view name);
std::string to_string(Pool pool);

// GroupNorm32 (improved-diffusion's `normalization`): every normalised layer uses 32 groups.
inline constexpr int64_t kGroupNormGroups = 32;

// The channels of the first convolution: in_channels, doubled for an upsampler.
int64_t stem_in_channels(const UNetConfig& config);

// The channels of resolution level `level`: model_channels * channel_mult[level] (guided-
// diffusion's int(mult * model_channels)). Level 0's are also the stem's and the last output
// block's. Needs a validated config.
int64_t level_channels(const UNetConfig& config, size_t level);

// Throws std::invalid_argument with a one-line message naming the offending field.
void validate(const UNetConfig& config);

// The feature-map sizes the UNet produces, one per level: image_size, image_size/2, ...
std::vector<int64_t> feature_map_sizes(const UNetConfig& config);

// The number of attention heads of a block with `channels` channels.
int64_t attention_heads(const UNetConfig& config, int64_t channels);

}  // namespace difftrain::model
