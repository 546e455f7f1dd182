// A cheap unbiased estimate of the full bound of bound.hpp, L_T + sum_t L_t, from K network
// evaluations instead of T: stratified sampling of the sum over t. The decoder term L_0 differs
// from its neighbours by orders of magnitude, so it is always evaluated; [1, T) is cut into K - 1
// strata of size n_k (narrow at small t, where L_t changes fastest), one t is drawn uniformly in
// each (per image) and its L_t weighted by n_k.
// Then E[n_k L_t] = sum of L_t over stratum k, and the estimate's expectation is the full bound.
// With K = 1 a single t uniform in [0, T) is weighted by T; with K = T every t is evaluated once.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "diffusion/bound.hpp"
#include "diffusion/schedule.hpp"

namespace difftrain::diffusion {

struct StratifiedTimesteps {
  at::Tensor t;        // [N, K] int64, CPU: image i's timestep in stratum k (rows ascending)
  at::Tensor weights;  // [K] float64: how many timesteps each stratum stands for (sums to T)
};

// K in [1, T]; throws std::invalid_argument otherwise. Every image draws its own timestep in each
// stratum: a draw shared by the batch would make every image's estimate err the same way, and the
// standard error over images would not show it.
StratifiedTimesteps stratified_timesteps(long num_timesteps, long k, int64_t num_images,
                                         at::Generator generator);

struct BpdEstimate {
  at::Tensor total_bpd;  // [N] unbiased estimate of calc_bpd_loop(...).total_bpd
  at::Tensor prior_bpd;  // [N] L_T, exact
  at::Tensor vb;         // [N, K] L_t in bits/dim at the drawn timesteps (unweighted)
  StratifiedTimesteps timesteps;
};

// One estimate on a batch x_start [N, C, ...] at the given timesteps (K network calls on N
// images). noise(t) gives the eps of x_t at timestep t, shaped like x_start (image i takes row i);
// clip_denoised as in evaluation (calc_bpd_loop).
BpdEstimate estimate_bpd(const GaussianDiffusion& d, const ModelFn& model,
                         const at::Tensor& x_start, const StratifiedTimesteps& timesteps,
                         bool clip_denoised, const NoiseFn& noise);

// The same with K strata drawn from `generator`; the noise, when `noise` is empty, too (after
// the timesteps).
BpdEstimate estimate_bpd(const GaussianDiffusion& d, const ModelFn& model,
                         const at::Tensor& x_start, long k, at::Generator generator,
                         bool clip_denoised = true, const NoiseFn& noise = {});

}  // namespace difftrain::diffusion
