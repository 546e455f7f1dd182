#include "weights/state_dict.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <map>
#include <set>

namespace difftrain::weights {
namespace {

// "a, b, c and 4 more": enough names to act on without flooding the terminal.
std::string first_names(const std::vector<std::string>& names) {
  constexpr std::size_t kShown = 4;
  std::string s;
  for (std::size_t i = 0; i < std::min(kShown, names.size()); ++i)
    s += (i ? ", " : "") + names[i];
  if (names.size() > kShown) s += fmt::format(" and {} more", names.size() - kShown);
  return s;
}

}  // namespace

std::string shape_string(at::IntArrayRef shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

StateDict state_dict_of(const torch::nn::Module& model) {
  StateDict state;
  for (const auto& p : model.named_parameters())
    state.push_back({p.key(), p.value().detach().to(at::kCPU).contiguous()});
  for (const auto& b : model.named_buffers())
    state.push_back({b.key(), b.value().detach().to(at::kCPU).contiguous()});
  return state;
}

void load_state_dict(torch::nn::Module& model, const StateDict& weights,
                     const std::string& origin) {
  std::map<std::string, at::Tensor> given;
  for (const auto& [name, t] : weights)
    given.emplace(name, t);
  std::vector<std::pair<std::string, at::Tensor>> targets;
  for (const auto& p : model.named_parameters())
    targets.emplace_back(p.key(), p.value());
  for (const auto& b : model.named_buffers())
    targets.emplace_back(b.key(), b.value());

  std::vector<std::string> missing, misshaped, not_float;
  for (const auto& [name, target] : targets) {
    const auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
    } else if (it->second.sizes() != target.sizes()) {
      misshaped.push_back(fmt::format("{} is {} in the file, {} in the model", name,
                                      shape_string(it->second.sizes()),
                                      shape_string(target.sizes())));
    } else if (at::isFloatingType(target.scalar_type()) &&
               !at::isFloatingType(it->second.scalar_type())) {
      not_float.push_back(fmt::format("{} ({})", name, c10::toString(it->second.scalar_type())));
    }
  }
  std::vector<std::string> unexpected;
  std::set<std::string> known;
  for (const auto& [name, target] : targets)
    known.insert(name);
  for (const auto& [name, t] : given)
    if (!known.count(name)) unexpected.push_back(name);

  std::vector<std::string> problems;
  if (!missing.empty())
    problems.push_back(fmt::format("{} missing ({})", missing.size(), first_names(missing)));
  if (!unexpected.empty())
    problems.push_back(
        fmt::format("{} unexpected ({})", unexpected.size(), first_names(unexpected)));
  if (!misshaped.empty())
    problems.push_back(
        fmt::format("{} of another shape ({})", misshaped.size(), first_names(misshaped)));
  if (!not_float.empty())
    problems.push_back(
        fmt::format("{} not floating point ({})", not_float.size(), first_names(not_float)));
  if (!problems.empty())
    throw WeightsError(fmt::format(
        "{}: the tensors do not fit the model the config builds: {} (weights of another "
        "architecture or config?)",
        origin, fmt::join(problems, "; ")));

  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : targets)
    target.copy_(given.at(name));  // copy_ converts fp16 / bf16 / fp64
}

}  // namespace difftrain::weights
