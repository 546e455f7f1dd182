// Post-hoc EMA: EDM2's power-function EMA (Karras et al. 2024, "Analyzing and Improving the
// Training Dynamics of Diffusion Models", §3 and Appendix C; NVlabs/edm2 training/phema.py).
//
// A profile with exponent gamma averages the weights theta(tau) of the training time tau in
// [0, t] with weight proportional to tau^gamma; t counts the images of the steps taken. Its width
// relative to t is sigma_rel. The trainer tracks a few profiles (training.phema.sigma_rels) and
// snapshots them now and then (train/phema_snapshot.hpp); after training, the average for any
// sigma_rel is a least-squares combination of the snapshots (train/phema_reconstruct.hpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace torch::serialize {
class InputArchive;
class OutputArchive;
}  // namespace torch::serialize

namespace difftrain::train::phema {

// sigma_rel of gamma = 0, 1 / sqrt(12): the widest profile with a positive exponent. Valid
// sigma_rels lie in (0, kMaxSigmaRel).
inline constexpr double kMaxSigmaRel = 0.28867513459481287;

// sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (EDM2 Eq. 123).
double gamma_to_sigma_rel(double gamma);
// The largest real root of gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + (12 - sigma_rel^-2)
// (EDM2 Eq. 126, Algorithm 2). Throws std::invalid_argument, naming the value and the valid
// range, outside (0, kMaxSigmaRel).
double sigma_rel_to_gamma(double sigma_rel);

// The inner product of two normalised profiles, p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1) on
// [0, t] (EDM2 Eq. 151, Algorithm 3):
//   (gamma_a + 1)(gamma_b + 1) (t_a / t_b)^e / ((gamma_a + gamma_b + 1) max(t_a, t_b)),
// with e = gamma_b when t_a < t_b, else -gamma_a.
double profile_dot(double t_a, double gamma_a, double t_b, double gamma_b);

struct Profile {
  double sigma_rel = 0;
  double gamma = 0;
  std::vector<at::Tensor> params;  // the average, in the model's parameter order and dtype
};

// The tracked profiles, identical on every rank (they are updated from the replicated weights by
// a decision every rank takes alike).
struct PowerFunctionEma {
  std::vector<Profile> profiles;  // empty: post-hoc EMA is off
  // The training time t in images: a float64 scalar on the weights' device, advanced by the batch
  // size at each step that was not skipped, so that a skipped step adds neither time nor weight
  // and the profiles stay exact power functions of t.
  at::Tensor images;
};

// Copies of `params` for each sigma_rel (the copies are overwritten at the first step: beta = 0).
PowerFunctionEma make_power_function_ema(const std::vector<double>& sigma_rels,
                                         const std::vector<at::Tensor>& params);

// After an optimizer step of `batch_size` images: t <- t + b, beta = (1 - b / t)^(gamma + 1)
// (EDM2 Eq. 127), ema <- lerp(ema, theta, 1 - beta) (train::move_averages). `skip` (a
// 0-dim float32 on the device, 0 or 1) makes b = 0, so beta = 1, decided on the device: no host
// synchronisation.
void update(PowerFunctionEma& ema, const std::vector<at::Tensor>& params, int64_t batch_size,
            const at::Tensor& skip);

// Appends what the replica check compares across ranks: t and every profile.
void append_replicated_state(const PowerFunctionEma& ema, std::vector<at::Tensor>& state);

// The exact-resume state inside a checkpoint (keys phema/...). Loading checks that the
// checkpoint tracked the same sigma_rels and throws CheckpointError naming both lists when not;
// with no profiles configured it reads nothing. It returns false for a checkpoint that holds no
// profiles (written before difftrain tracked them): the profiles are then left as they are, and
// their first update (beta = 0 at t = 0) starts them from the weights of that step.
void save_state(torch::serialize::OutputArchive& archive, const PowerFunctionEma& ema);
bool load_state(torch::serialize::InputArchive& archive, const std::string& path,
                PowerFunctionEma& ema);

// "0.05, 0.1": sigma_rels for messages.
std::string format_sigma_rels(const std::vector<double>& sigma_rels);

}  // namespace difftrain::train::phema
