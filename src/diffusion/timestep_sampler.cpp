#include "diffusion/timestep_sampler.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "common/host_to_device.hpp"

namespace difftrain::diffusion {

TimestepSamplerKind parse_timestep_sampler(const std::string& name) {
  if (name == "uniform") return TimestepSamplerKind::uniform;
  if (name == "loss-second-moment") return TimestepSamplerKind::loss_second_moment;
  if (name == "logit_normal") return TimestepSamplerKind::logit_normal;
  if (name == "stratified") return TimestepSamplerKind::stratified;
  throw std::invalid_argument("unknown timestep sampler '" + name +
                              "' (valid: uniform, loss-second-moment, logit_normal, stratified)");
}

std::string to_string(TimestepSamplerKind kind) {
  switch (kind) {
    case TimestepSamplerKind::uniform:
      return "uniform";
    case TimestepSamplerKind::loss_second_moment:
      return "loss-second-moment";
    case TimestepSamplerKind::logit_normal:
      return "logit_normal";
    case TimestepSamplerKind::stratified:
      return "stratified";
  }
  return "?";
}

TimestepSampler make_timestep_sampler(TimestepSamplerKind kind, long num_timesteps,
                                      const c10::Device& device) {
  TimestepSamplerOptions options;
  options.kind = kind;
  return make_timestep_sampler(options, num_timesteps, device);
}

TimestepSampler make_timestep_sampler(const TimestepSamplerOptions& o, long num_timesteps,
                                      const c10::Device& device) {
  if (!(o.logit_normal_std > 0))
    throw std::invalid_argument("logit_normal std must be > 0, got " +
                                std::to_string(o.logit_normal_std));
  TimestepSampler s;
  s.kind = o.kind;
  s.num_timesteps = num_timesteps;
  s.stratified = o.stratified || o.kind == TimestepSamplerKind::stratified;
  s.logit_normal_mean = o.logit_normal_mean;
  s.logit_normal_std = o.logit_normal_std;
  s.loss_history =
      at::zeros({num_timesteps, s.history_per_term}, at::TensorOptions(device).dtype(at::kDouble));
  s.loss_counts = at::zeros({num_timesteps}, at::TensorOptions(device).dtype(at::kLong));
  return s;
}

at::Tensor timestep_probabilities(const TimestepSampler& s) {
  const double T = static_cast<double>(s.num_timesteps);
  const at::Tensor uniform = at::full({s.num_timesteps}, 1.0 / T, s.loss_history.options());
  if (s.kind == TimestepSamplerKind::uniform || s.kind == TimestepSamplerKind::stratified)
    return uniform;
  if (s.kind == TimestepSamplerKind::logit_normal) {
    // P(t/T <= sigmoid(z) < (t+1)/T), z ~ N(mean, std^2): differences of Phi((logit(u) - mean) /
    // std) at the bin edges u = k/T (logit(0) = -inf and logit(1) = +inf give 0 and 1).
    const at::Tensor u = at::arange(s.num_timesteps + 1, s.loss_history.options()) / T;
    const at::Tensor z = (at::logit(u) - s.logit_normal_mean) / s.logit_normal_std;
    const at::Tensor cdf = 0.5 * (1.0 + at::erf(z / std::sqrt(2.0)));
    const at::Tensor p = cdf.slice(0, 1) - cdf.slice(0, 0, -1);
    return (p / p.sum()) * (1.0 - s.uniform_prob) + s.uniform_prob / T;
  }
  at::Tensor p = at::sqrt(s.loss_history.square().mean(1));
  p = p / p.sum();
  p = p * (1.0 - s.uniform_prob) + s.uniform_prob / T;
  // Selected on the device, so that warm-up needs no host synchronisation.
  const at::Tensor warm = (s.loss_counts >= s.history_per_term).all();
  return at::where(warm, p, uniform);
}

TimestepDraw draw_timesteps(const TimestepSampler& s, int64_t n, at::Generator generator) {
  // u in [0, 1) comes from the host generator, so that every device and every rank draws the same
  // numbers; t = F^{-1}(u) is then computed where the sampler's state lives (no host sync).
  const auto host = at::TensorOptions().dtype(at::kDouble);
  at::Tensor u;
  if (s.stratified) {
    // One u in each stratum [i/n, (i+1)/n), the strata in random order so that no rank's slice
    // of the global batch is tied to one end of [0, T).
    const at::Tensor stratum = at::randperm(n, generator, host.dtype(at::kLong)).to(at::kDouble);
    u = (stratum + at::rand({n}, generator, host)) / static_cast<double>(n);
  } else {
    u = at::rand({n}, generator, host);
  }
  u = host_to_device(u, s.loss_history.device());

  const double T = static_cast<double>(s.num_timesteps);
  TimestepDraw d;
  if (s.kind == TimestepSamplerKind::uniform || s.kind == TimestepSamplerKind::stratified) {
    d.t = at::floor(u * T).to(at::kLong).clamp_max(s.num_timesteps - 1);
    d.weights = at::ones({n}, u.options());
    return d;
  }
  const at::Tensor p = timestep_probabilities(s);
  d.t = at::searchsorted(at::cumsum(p, 0), u, /*out_int32=*/false, /*right=*/true)
            .clamp_max(s.num_timesteps - 1);
  d.weights = 1.0 / (T * p.index_select(0, d.t));
  return d;
}

void record_losses(TimestepSampler& s, const at::Tensor& t_in, const at::Tensor& losses_in) {
  if (!records_losses(s)) return;
  const int64_t H = s.history_per_term;
  const at::Tensor t = t_in.to(s.loss_counts.device(), at::kLong).flatten();
  const at::Tensor losses = losses_in.detach().to(s.loss_history.device(), at::kDouble).flatten();
  // Group the entries by t, keeping their order within a group (stable sort).
  const at::Tensor order = std::get<1>(t.sort(/*stable=*/std::optional<bool>(true), 0));
  const at::Tensor ts = t.index_select(0, order), ls = losses.index_select(0, order);
  // Entries per t by index_add_, not bincount, which on CUDA reads its output size on the host.
  const at::Tensor per_t =
      at::zeros({s.num_timesteps}, ts.options()).index_add_(0, ts, at::ones_like(ts));
  const at::Tensor group_start = per_t.cumsum(0) - per_t;
  const at::Tensor in_group = per_t.index_select(0, ts);
  const at::Tensor rank_in_group =
      at::arange(ts.size(0), ts.options()) - group_start.index_select(0, ts);
  // Only the newest H entries of a t survive. Each entry writes the value of the newest entry of
  // its t with the same ring position, so that every write to a position agrees: selecting the
  // survivors by mask would read their number on the host.
  const at::Tensor newest = rank_in_group + H * (in_group - 1 - rank_in_group).div(H, "floor");
  const at::Tensor pos = (s.loss_counts.index_select(0, ts) + rank_in_group).remainder(H);
  s.loss_history.index_put_({ts, pos},
                            ls.index_select(0, group_start.index_select(0, ts) + newest));
  s.loss_counts.add_(per_t);
}

}  // namespace difftrain::diffusion
