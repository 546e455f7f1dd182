// Timestep densities p(t): uniform; importance sampling with p(t) proportional to sqrt(E[L_t^2])
// over each timestep's recent losses (Nichol & Dhariwal 2021, §3.3); a discretised logit-normal
// (Esser et al. 2024, "Scaling Rectified Flow Transformers", §3.1). Any of them can be drawn
// stratified: the n draws of a (global) batch take one u in each of n equal strata of [0, 1)
// (in a random order), mapped through the inverse CDF of p, so the batch covers [0, T) evenly
// and each rank's slice is a part of that one stratified sample. Draws come with weights
// 1 / (T p(t)), so that the weighted loss is an unbiased estimate of the uniform one.
// The state is plain tensors (saved in checkpoints) on the device of the losses.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

namespace difftrain::diffusion {

// `stratified` is the uniform density drawn stratified (= uniform with stratified = true).
enum class TimestepSamplerKind { uniform, loss_second_moment, logit_normal, stratified };
// "uniform" | "loss-second-moment" | "logit_normal" | "stratified"
TimestepSamplerKind parse_timestep_sampler(const std::string& name);
std::string to_string(TimestepSamplerKind kind);

struct TimestepSamplerOptions {
  TimestepSamplerKind kind = TimestepSamplerKind::uniform;
  bool stratified = false;  // stratify the draws of any density
  double logit_normal_mean = 0.0;
  double logit_normal_std = 1.0;
};

struct TimestepSampler {
  TimestepSamplerKind kind = TimestepSamplerKind::uniform;
  long num_timesteps = 0;
  bool stratified = false;
  int64_t history_per_term = 10;
  // The uniform share mixed into the non-uniform densities, so that 1 / (T p(t)) <= 1000.
  double uniform_prob = 0.001;
  double logit_normal_mean = 0.0;
  double logit_normal_std = 1.0;
  at::Tensor loss_history;  // [T, history_per_term] float64, a ring buffer per t
  at::Tensor loss_counts;   // [T] int64, losses recorded so far per t
};

TimestepSampler make_timestep_sampler(TimestepSamplerKind kind, long num_timesteps,
                                      const c10::Device& device);
TimestepSampler make_timestep_sampler(const TimestepSamplerOptions& options, long num_timesteps,
                                      const c10::Device& device);

// Whether the sampler needs record_losses (only loss-second-moment keeps a history).
inline bool records_losses(const TimestepSampler& s) {
  return s.kind == TimestepSamplerKind::loss_second_moment;
}

// p(t), [T] float64: uniform until every t has history_per_term losses (loss-second-moment);
// logit-normal: the mass of [t/T, (t+1)/T) under sigmoid(N(mean, std^2)), mixed with
// uniform_prob of the uniform.
at::Tensor timestep_probabilities(const TimestepSampler& s);

struct TimestepDraw {
  at::Tensor t;        // [n] int64
  at::Tensor weights;  // [n] float64, 1 / (T p(t))
};
// `generator` is a CPU generator; t and weights come out on the sampler's device.
TimestepDraw draw_timesteps(const TimestepSampler& s, int64_t n, at::Generator generator);

// Records unweighted per-sample losses in order (the last history_per_term per t are kept),
// vectorised: no host loop and no host synchronisation.
void record_losses(TimestepSampler& s, const at::Tensor& t, const at::Tensor& losses);

}  // namespace difftrain::diffusion
