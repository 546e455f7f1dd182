// The configuration vocabulary of Gaussian diffusion, as improved-diffusion names it.
#pragma once

#include <string>
#include <string_view>

namespace difftrain::diffusion {

enum class BetaSchedule { linear, cosine, sigmoid };
// What the mean head of the network predicts: eps, x_0, the posterior mean, or
// v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, "Progressive distillation").
enum class ModelMeanType { epsilon, start_x, previous_x, v };
// How the reverse-process variance is obtained.
enum class ModelVarType { fixed_small, fixed_large, learned, learned_range };
enum class LossType { mse, rescaled_mse, kl, rescaled_kl };
// The weight w(t) on the simple (mse) term, written as a weight on the x_0 error and converted to
// the prediction target (see weighting.hpp); the VLB term is never weighted.
enum class SimpleWeighting { none, min_snr, snr, sigmoid };

// Parsers throw std::invalid_argument naming the bad value and the valid ones.
BetaSchedule parse_beta_schedule(std::string_view name);
ModelMeanType parse_model_mean_type(std::string_view name);
ModelVarType parse_model_var_type(std::string_view name);
LossType parse_loss_type(std::string_view name);
SimpleWeighting parse_simple_weighting(std::string_view name);

std::string to_string(BetaSchedule v);
std::string to_string(ModelMeanType v);
std::string to_string(ModelVarType v);
std::string to_string(LossType v);
std::string to_string(SimpleWeighting v);

inline bool is_learned(ModelVarType v) {
  return v == ModelVarType::learned || v == ModelVarType::learned_range;
}
inline bool is_mse(LossType v) {
  return v == LossType::mse || v == LossType::rescaled_mse;
}

// Which terms enter the per-sample loss, and the factor on L_t (bits/dim).
struct LossSpec {
  bool mse = true;
  bool vb = false;
  double vb_scale = 1.0;
  // The simple term is w(t) * mse; none (w = 1) is the reference loss.
  SimpleWeighting weighting = SimpleWeighting::none;
  double min_snr_gamma = 5.0;  // min_snr: Hang et al. 2023's gamma
  double sigmoid_bias = 0.0;   // sigmoid: Kingma & Gao 2023's b in sigmoid(b - log SNR)
};

// The golden-reference loss types (golden README §4.6).
LossSpec loss_spec(LossType type, ModelVarType var_type, long num_timesteps);
// The hybrid objective L_simple + lambda * L_vlb, estimated per sample as mse + lambda*T*L_t.
// lambda = 0.001 is the published hybrid (= rescaled_mse); lambda = 1/T gives mse.
LossSpec hybrid_loss_spec(double vlb_weight, long num_timesteps);

}  // namespace difftrain::diffusion
