// Timestep samplers (Nichol & Dhariwal 2021, §3.3): uniform, or importance sampling with
// p(t) proportional to sqrt(E[L_t^2]) over each timestep's recent losses. Draws come with weights
// 1 / (T p(t)), so that the weighted loss is an unbiased estimate of the uniform one.
// The state is plain tensors (saved in checkpoints) on the device of the losses.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

namespace difftrain::diffusion {

enum class TimestepSamplerKind { uniform, loss_second_moment };
TimestepSamplerKind parse_timestep_sampler(const std::string& name);  // "uniform" | "loss-second-moment"

struct TimestepSampler {
  TimestepSamplerKind kind = TimestepSamplerKind::uniform;
  long num_timesteps = 0;
  int64_t history_per_term = 10;
  double uniform_prob = 0.001;
  at::Tensor loss_history;  // [T, history_per_term] float64, a ring buffer per t
  at::Tensor loss_counts;   // [T] int64, losses recorded so far per t
};

TimestepSampler make_timestep_sampler(TimestepSamplerKind kind, long num_timesteps,
                                      const c10::Device& device);

// p(t), [T] float64: uniform until every t has history_per_term losses.
at::Tensor timestep_probabilities(const TimestepSampler& s);

struct TimestepDraw {
  at::Tensor t;        // [n] int64
  at::Tensor weights;  // [n] float64, 1 / (T p(t))
};
TimestepDraw draw_timesteps(const TimestepSampler& s, int64_t n, at::Generator generator);

// Records unweighted per-sample losses in order (the last history_per_term per t are kept),
// vectorised: no host loop and no host synchronisation.
void record_losses(TimestepSampler& s, const at::Tensor& t, const at::Tensor& losses);

}  // namespace difftrain::diffusion
