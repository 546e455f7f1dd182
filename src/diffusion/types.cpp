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

constexpr std::array<std::pair<const char*, BetaSchedule>, 3> kSchedules{
    {{"linear", BetaSchedule::linear},
     {"cosine", BetaSchedule::cosine},
     {"sigmoid", BetaSchedule::sigmoid}}};
constexpr std::array<std::pair<const char*, ModelMeanType>, 4> kMeanTypes{
    {{"epsilon", ModelMeanType::epsilon},
     {"start_x", ModelMeanType::start_x},
     {"previous_x", ModelMeanType::previous_x},
     {"v", ModelMeanType::v}}};
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
constexpr std::array<std::pair<const char*, SimpleWeighting>, 4> kWeightings{
    {{"none", SimpleWeighting::none},
     {"min_snr", SimpleWeighting::min_snr},
     {"snr", SimpleWeighting::snr},
     {"sigmoid", SimpleWeighting::sigmoid}}};

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
SimpleWeighting parse_simple_weighting(std::string_view n) {
  return parse("weighting", n, kWeightings);
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
std::string to_string(SimpleWeighting v) {
  return name_of(v, kWeightings);
}

LossSpec loss_spec(LossType type, ModelVarType var_type, long num_timesteps) {
  const double T = static_cast<double>(num_timesteps);
  LossSpec spec;
  switch (type) {
    case LossType::mse:
      spec.vb = is_learned(var_type);
      return spec;
    case LossType::rescaled_mse:
      spec.vb = is_learned(var_type);
      spec.vb_scale = T / 1000.0;
      return spec;
    case LossType::kl:
      spec.mse = false;
      spec.vb = true;
      return spec;
    case LossType::rescaled_kl:
      spec.mse = false;
      spec.vb = true;
      spec.vb_scale = T;
      return spec;
  }
  throw std::logic_error("unreachable loss type");
}

LossSpec hybrid_loss_spec(double vlb_weight, long num_timesteps) {
  LossSpec spec;
  spec.vb = true;
  spec.vb_scale = vlb_weight * static_cast<double>(num_timesteps);
  return spec;
}

}  // namespace difftrain::diffusion
