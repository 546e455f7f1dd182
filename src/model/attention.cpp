#include "model/attention.hpp"

#include "model/gradient_checkpoint.hpp"
#include "model/zero_module.hpp"

namespace difftrain::model {

at::Tensor qkv_attention(const at::Tensor& qkv, int64_t num_heads, bool new_order) {
  const int64_t n = qkv.size(0), t = qkv.size(2);
  const int64_t head_dim = qkv.size(1) / (3 * num_heads);
  std::vector<at::Tensor> q_k_v;
  if (new_order) {
    // [N, 3C, T] -> three [N, C, T] -> each [N, H, d, T] -> [N, H, T, d].
    for (const auto& part : qkv.chunk(3, 1))
      q_k_v.push_back(part.reshape({n, num_heads, head_dim, t}).transpose(2, 3));
  } else {
    // [N, 3C, T] -> [N, H, 3d, T] -> [N, H, T, 3d]; then q, k, v are consecutive d-channel slices.
    q_k_v = qkv.reshape({n, num_heads, 3 * head_dim, t}).transpose(2, 3).contiguous().chunk(3, -1);
  }
  // Default scale 1 / sqrt(d), which equals improved-diffusion's (q d^-1/4) . (k d^-1/4).
  const auto h = at::scaled_dot_product_attention(q_k_v[0], q_k_v[1], q_k_v[2]);  // [N, H, T, d]
  if (is_token_major(qkv))
    return h.transpose(1, 2).reshape({n, t, num_heads * head_dim}).transpose(1, 2);
  return h.transpose(2, 3).reshape({n, num_heads * head_dim, t});
}

bool is_token_major(const at::Tensor& a) {
  return a.size(1) > 1 && a.size(2) > 1 && a.stride(1) == 1;
}

namespace {

// A kernel-1 Conv1d over [N, C, T] computed as a matmul over the channels of each position: its
// output is token-major ([N, T, C_out] in memory), where ATen's conv1d makes its input
// channels-first first (a transposing copy) and returns channels-first.
at::Tensor per_position(const torch::nn::Conv1d& conv, const at::Tensor& a) {
  return at::linear(a.transpose(1, 2), conv->weight.squeeze(-1), conv->bias).transpose(1, 2);
}

}  // namespace

AttentionBlockImpl::AttentionBlockImpl(int64_t channels, int64_t num_heads, bool new_order,
                                       bool use_checkpoint)
    : num_heads_(num_heads),
      new_order_(new_order),
      use_checkpoint_(use_checkpoint),
      norm_(register_module("norm", GroupNorm32(channels))),
      qkv_(register_module("qkv",
                           torch::nn::Conv1d(torch::nn::Conv1dOptions(channels, 3 * channels, 1)))),
      proj_out_(register_module(
          "proj_out", torch::nn::Conv1d(torch::nn::Conv1dOptions(channels, channels, 1)))) {
  zero_parameters(*proj_out_);
}

at::Tensor AttentionBlockImpl::forward(const at::Tensor& x) {
  if (!use_checkpoint_) return block(x);
  auto self = std::static_pointer_cast<AttentionBlockImpl>(shared_from_this());
  return gradient_checkpoint(
      [self](const std::vector<at::Tensor>& in) { return self->block(in[0]); }, {x}, parameters());
}

at::Tensor AttentionBlockImpl::block(const at::Tensor& x) {
  // GroupNorm over [N, C, H, W] equals improved-diffusion's over [N, C, H * W].
  const at::Tensor normed = norm_(x).flatten(2);
  if (x.suggest_memory_format() != at::MemoryFormat::ChannelsLast) {
    const auto h = proj_out_(qkv_attention(qkv_(normed), num_heads_, new_order_));
    return x + h.view(x.sizes());
  }
  // A channels-last x is [N, T, C] in memory: the same block on those rows gives h in x's layout,
  // so that the residual sum and its gradient do not mix layouts (several times slower on the
  // CPU, uncoalesced on a GPU), with no transposing copy for the convolutions either.
  const auto h =
      per_position(proj_out_, qkv_attention(per_position(qkv_, normed), num_heads_, new_order_));
  return x + h.view(x.sizes());
}

}  // namespace difftrain::model
