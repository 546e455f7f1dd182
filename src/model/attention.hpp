// improved-diffusion's AttentionBlock: spatial multi-head self-attention with a residual, computed
// by LibTorch's fused scaled_dot_product_attention.
#pragma once

#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include "model/group_norm32.hpp"

namespace difftrain::model {

// improved-diffusion's QKVAttention: qkv [N, 3 * C, T] -> [N, C, T], softmax(q k^T / sqrt(d)) v
// per head, d = C / num_heads.
//
// Head split order (improved-diffusion's, called QKVAttentionLegacy in guided-diffusion): the
// 3C channels are grouped head-major, [head 0: q (d), k (d), v (d) | head 1: q, k, v | ...], i.e.
// qkv.reshape(N * H, 3 * d, T) then split into q, k, v. The output channels are head-major too:
// channel h * d + i is channel i of head h. With this order, qkv/proj_out weights copy unchanged
// to and from improved-diffusion.
//
// new_order (guided-diffusion's QKVAttention, use_new_attention_order): q, k, v are the three
// C-channel thirds of the 3C channels, each then split into heads, [q: head 0 (d) | head 1 | ... |
// k: ... | v: ...]. The output channels are head-major as above.
//
// The output has qkv's layout: channels-first, or token-major ([N, T, 3C] in memory, as a
// channels-last block's rows) giving [N, C, T] with strides [T C, 1, C].
at::Tensor qkv_attention(const at::Tensor& qkv, int64_t num_heads, bool new_order = false);

// a [N, C, T] is token-major: [N, T, C] in memory.
bool is_token_major(const at::Tensor& a);

// Children (state-dict names): norm (GroupNorm32), qkv (Conv1d C -> 3C, kernel 1), proj_out
// (zero-initialised Conv1d C -> C, kernel 1). Conv1d keeps improved-diffusion's weight shapes
// [3C, C, 1] and [C, C, 1].
// forward: x + proj_out(qkv_attention(qkv(norm(x)))) over the H * W positions, in x's layout
// (channels-first, or channels-last: then qkv and proj_out run as matmuls over each position's
// channels, and every activation of the block is token-major). With
// use_checkpoint, forward keeps none of the block's activations for backward
// (gradient_checkpoint.hpp).
class AttentionBlockImpl : public torch::nn::Module {
 public:
  AttentionBlockImpl(int64_t channels, int64_t num_heads, bool new_order = false,
                     bool use_checkpoint = false);
  at::Tensor forward(const at::Tensor& x);

 private:
  at::Tensor block(const at::Tensor& x);

  int64_t num_heads_;
  bool new_order_;
  bool use_checkpoint_;
  GroupNorm32 norm_{nullptr};
  torch::nn::Conv1d qkv_{nullptr};
  torch::nn::Conv1d proj_out_{nullptr};
};
TORCH_MODULE(AttentionBlock);

}  // namespace difftrain::model
