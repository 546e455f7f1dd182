#include "diffusion/timestep_sampler.hpp"

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>

namespace difftrain::diffusion {

TimestepSamplerKind parse_timestep_sampler(const std::string& name) {
  if (name == "uniform") return TimestepSamplerKind::uniform;
  if (name == "loss-second-moment") return TimestepSamplerKind::loss_second_moment;
  throw std::invalid_argument("unknown timestep sampler '" + name +
                              "' (valid: uniform, loss-second-moment)");
}

TimestepSampler make_timestep_sampler(TimestepSamplerKind kind, long num_timesteps,
                                      const c10::Device& device) {
  TimestepSampler s;
  s.kind = kind;
  s.num_timesteps = num_timesteps;
  s.loss_history =
      at::zeros({num_timesteps, s.history_per_term}, at::TensorOptions(device).dtype(at::kDouble));
  s.loss_counts = at::zeros({num_timesteps}, at::TensorOptions(device).dtype(at::kLong));
  return s;
}

at::Tensor timestep_probabilities(const TimestepSampler& s) {
  const double T = static_cast<double>(s.num_timesteps);
  const at::Tensor uniform = at::full({s.num_timesteps}, 1.0 / T, s.loss_history.options());
  if (s.kind == TimestepSamplerKind::uniform) return uniform;
  at::Tensor p = at::sqrt(s.loss_history.square().mean(1));
  p = p / p.sum();
  p = p * (1.0 - s.uniform_prob) + s.uniform_prob / T;
  // Selected on the device, so that warm-up needs no host synchronisation.
  const at::Tensor warm = (s.loss_counts >= s.history_per_term).all();
  return at::where(warm, p, uniform);
}

TimestepDraw draw_timesteps(const TimestepSampler& s, int64_t n, at::Generator generator) {
  const at::Tensor p = timestep_probabilities(s);
  TimestepDraw d;
  if (s.kind == TimestepSamplerKind::uniform) {
    d.t = at::randint(s.num_timesteps, {n}, generator, p.options().dtype(at::kLong));
    d.weights = at::ones({n}, p.options());
    return d;
  }
  d.t = at::multinomial(p, n, /*replacement=*/true, generator);
  d.weights = 1.0 / (static_cast<double>(s.num_timesteps) * p.index_select(0, d.t));
  return d;
}

void record_losses(TimestepSampler& s, const at::Tensor& t_in, const at::Tensor& losses_in) {
  if (s.kind == TimestepSamplerKind::uniform) return;
  const int64_t H = s.history_per_term;
  const at::Tensor t = t_in.to(s.loss_counts.device(), at::kLong).flatten();
  const at::Tensor losses = losses_in.detach().to(s.loss_history.device(), at::kDouble).flatten();
  // Group the entries by t, keeping their order within a group (stable sort).
  const at::Tensor order = std::get<1>(t.sort(/*stable=*/std::optional<bool>(true), 0));
  const at::Tensor ts = t.index_select(0, order), ls = losses.index_select(0, order);
  const at::Tensor per_t = at::bincount(ts, {}, s.num_timesteps);
  const at::Tensor group_start = per_t.cumsum(0) - per_t;
  const at::Tensor rank_in_group =
      at::arange(ts.size(0), ts.options()) - group_start.index_select(0, ts);
  // Only the newest H entries of a t survive; they land on distinct ring positions.
  const at::Tensor keep = rank_in_group >= per_t.index_select(0, ts) - H;
  const at::Tensor pos = (s.loss_counts.index_select(0, ts) + rank_in_group).remainder(H);
  s.loss_history.index_put_({ts.masked_select(keep), pos.masked_select(keep)},
                            ls.masked_select(keep));
  s.loss_counts.add_(per_t);
}

}  // namespace difftrain::diffusion
