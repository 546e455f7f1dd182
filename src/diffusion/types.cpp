#include "diffusion/types.hpp"

#include <array>
#include <stdexcept>
#include <utility>

namespace difftrain::diffusion {
namespace {

template <typename E, std::size_t N>
E parse(std::string_view what, std::string_view name,
        const std::array<std::pair<const char*, E>, N>& table) {
  std::string valid;
  for (const auto& [key, value] : table) {
    if (name == key) return value;
    valid += valid.empty() ? key : std::string(", ") + key;
  }
  throw std::invalid_argument("unknown " + std::string(what) + " '" + std::string(name) +
                              "' (valid: " + valid + ")");
}

template <typename E, std::size_t N>
std::string name_of(E v, const std::array<std::pair<const char*, E>, N>& table) {
  for (const auto& [key, value] : table)
    if (value == v) return key;
  return "?";
}

constexpr std::array<std::pair<const char*, BetaSchedule>, 2> kSchedules{
    {{"linear", BetaSchedule::linear}, {"cosine", BetaSchedule::cosine}}};
constexpr std::array<std::pair<const char*, ModelMeanType>, 3> kMeanTypes{
    {{"epsilon", ModelMeanType::epsilon},
     {"start_x", ModelMeanType::start_x},
     {"previous_x", ModelMeanType::previous_x}}};
constexpr std::array<std::pair<const char*, ModelVarType>, 4> kVarTypes{
    {{"fixed_small", ModelVarType::fixed_small},
     {"fixed_large", ModelVarType::fixed_large},
     {"learned", ModelVarType::learned},
     {"learned_range", ModelVarType::learned_range}}};
constexpr std::array<std::pair<const char*, LossType>, 4> kLossTypes{
    {{"mse", LossType::mse},
     {"rescaled_mse", LossType::rescaled_mse},
     {"kl", LossType::kl},
     {"rescaled_kl", LossType::rescaled_kl}}};

}  // namespace

BetaSchedule parse_beta_schedule(std::string_view n) {
  return parse("schedule", n, kSchedules);
}
ModelMeanType parse_model_mean_type(std::string_view n) {
  return parse("model_mean_type", n, kMeanTypes);
}
ModelVarType parse_model_var_type(std::string_view n) {
  return parse("model_var_type", n, kVarTypes);
}
LossType parse_loss_type(std::string_view n) {
  return parse("loss_type", n, kLossTypes);
}

std::string to_string(BetaSchedule v) {
  return name_of(v, kSchedules);
}
std::string to_string(ModelMeanType v) {
  return name_of(v, kMeanTypes);
}
std::string to_string(ModelVarType v) {
  return name_of(v, kVarTypes);
}
std::string to_string(LossType v) {
  return name_of(v, kLossTypes);
}

LossSpec loss_spec(LossType type, ModelVarType var_type, long num_timesteps) {
  const double T = static_cast<double>(num_timesteps);
  switch (type) {
    case LossType::mse:
      return {true, is_learned(var_type), 1.0};
    case LossType::rescaled_mse:
      return {true, is_learned(var_type), T / 1000.0};
    case LossType::kl:
      return {false, true, 1.0};
    case LossType::rescaled_kl:
      return {false, true, T};
  }
  throw std::logic_error("unreachable loss type");
}

LossSpec hybrid_loss_spec(double vlb_weight, long num_timesteps) {
  return {true, true, vlb_weight * static_cast<double>(num_timesteps)};
}

}  // namespace difftrain::diffusion
