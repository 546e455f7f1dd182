#include "train/phema_reconstruct.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>
#include <unordered_map>

#include "train/config.hpp"

namespace difftrain::train::phema {
namespace {

std::string list_steps(const std::vector<Snapshot>& snapshots) {
  std::vector<std::string> steps;
  for (const Snapshot& s : snapshots)
    steps.push_back(std::to_string(s.step));
  if (steps.size() > 12) {  // the first and last few
    steps.erase(steps.begin() + 5, steps.end() - 5);
    steps.insert(steps.begin() + 5, "...");
  }
  std::string out;
  for (const std::string& s : steps)
    out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

Solution solve_coefficients(const std::vector<Input>& inputs, double images, double gamma) {
  const auto n = static_cast<int64_t>(inputs.size());
  if (n == 0) throw std::invalid_argument("post-hoc EMA: no snapshot profiles to combine");
  at::Tensor A = at::empty({n, n}, at::kDouble), B = at::empty({n, 1}, at::kDouble);
  auto a = A.accessor<double, 2>();
  auto b = B.accessor<double, 2>();
  for (int64_t i = 0; i < n; ++i) {
    const Input& in = inputs[static_cast<std::size_t>(i)];
    for (int64_t j = 0; j < n; ++j) {
      const Input& other = inputs[static_cast<std::size_t>(j)];
      a[i][j] = profile_dot(in.images, in.gamma, other.images, other.gamma);
    }
    b[i][0] = profile_dot(in.images, in.gamma, images, gamma);
  }
  at::Tensor x = std::get<0>(at::linalg_lstsq(A, B, std::nullopt, "gelsd"));
  Solution s;
  s.residual = ((A.matmul(x) - B).norm() / B.norm()).item<double>();
  x = x / x.sum();
  // ||sum x_i p_i - p||^2 = x'Ax - 2 x'B + p.p
  const double pp = profile_dot(images, gamma, images, gamma);
  const double squared = (x.t().matmul(A).matmul(x) - 2 * x.t().matmul(B)).item<double>() + pp;
  s.profile_error = std::sqrt(std::max(0.0, squared) / pp);
  s.coefficients.assign(x.data_ptr<double>(), x.data_ptr<double>() + n);
  return s;
}

Plan plan_reconstruction(const std::string& run_dir, std::optional<int64_t> step,
                         const std::vector<double>& input_sigma_rels) {
  const std::vector<Snapshot> all = list_snapshots(run_dir);
  if (all.empty())
    throw std::invalid_argument(run_dir + ": no post-hoc EMA snapshots in " +
                                snapshot_dir(run_dir) +
                                " (was training.phema.sigma_rels empty, or the run shorter than "
                                "training.phema.snapshot_every?)");
  const int64_t target = step.value_or(all.back().step);
  const auto at_step =
      std::find_if(all.begin(), all.end(), [&](const Snapshot& s) { return s.step == target; });
  if (at_step == all.end())
    throw std::invalid_argument(
        fmt::format("step {} has no post-hoc EMA snapshot; the snapshots of {} are at steps {}",
                    target, run_dir, list_steps(all)));

  if (at_step->images <= 0)
    throw std::invalid_argument(fmt::format(
        "the snapshot of step {} has an empty average (every step before it was skipped)", target));
  Plan plan;
  plan.step = target;
  plan.images = at_step->images;
  plan.config_yaml = at_step->config_yaml;
  for (const Snapshot& s : all)
    if (s.step <= target && s.images > 0) plan.snapshots.push_back(s);
  std::vector<double> used;
  for (std::size_t i = 0; i < plan.snapshots.size(); ++i) {
    const Snapshot& s = plan.snapshots[i];
    for (std::size_t k = 0; k < s.sigma_rels.size(); ++k) {
      const bool wanted =
          input_sigma_rels.empty() ||
          std::count(input_sigma_rels.begin(), input_sigma_rels.end(), s.sigma_rels[k]) > 0;
      if (!wanted) continue;
      plan.inputs.push_back({i, k, s.images, s.gammas[k]});
      used.push_back(s.sigma_rels[k]);
    }
  }
  for (double wanted : input_sigma_rels)
    if (std::count(used.begin(), used.end(), wanted) == 0)
      throw std::invalid_argument(
          fmt::format("no snapshot of {} up to step {} tracked sigma_rel {}; the run tracked {}",
                      run_dir, target, wanted, format_sigma_rels(at_step->sigma_rels)));
  return plan;
}

std::vector<Reconstruction> reconstruct(const Plan& plan, const std::vector<double>& sigma_rels) {
  std::vector<Reconstruction> out;
  for (double sigma_rel : sigma_rels) {
    Reconstruction r;
    r.sigma_rel = sigma_rel;
    r.gamma = sigma_rel_to_gamma(sigma_rel);
    r.solution = solve_coefficients(plan.inputs, plan.images, r.gamma);
    out.push_back(std::move(r));
  }
  // input[snapshot][profile]: the index of that profile among the inputs, -1 when not used.
  std::vector<std::vector<int64_t>> input(plan.snapshots.size());
  for (std::size_t s = 0; s < plan.snapshots.size(); ++s)
    input[s].assign(plan.snapshots[s].sigma_rels.size(), -1);
  for (std::size_t i = 0; i < plan.inputs.size(); ++i)
    input[plan.inputs[i].snapshot][plan.inputs[i].profile] = static_cast<int64_t>(i);

  // The parameters in the model's order, as the snapshot at the plan's step lists them.
  const Snapshot& last = plan.snapshots.back();
  std::vector<std::string> names;
  std::unordered_map<std::string, std::size_t> index;
  for (const SnapshotTensor& t : last.tensors)
    if (t.profile == 0) {
      index[t.name] = names.size();
      names.push_back(t.name);
    }

  // sum_i x_i theta_i, in float64, one accumulator per output.
  std::vector<std::vector<at::Tensor>> sums(out.size(), std::vector<at::Tensor>(names.size()));
  std::vector<std::pair<std::string, at::Tensor>> buffers;
  for (std::size_t s = 0; s < plan.snapshots.size(); ++s) {
    const Snapshot& snapshot = plan.snapshots[s];
    for_each_tensor(snapshot, [&](const SnapshotTensor& info, const at::Tensor& t) {
      if (info.profile < 0) {  // buffers are copied, not averaged: those at the plan's step
        if (s + 1 == plan.snapshots.size()) buffers.emplace_back(info.name, t);
        return;
      }
      const int64_t i = input[s][static_cast<std::size_t>(info.profile)];
      if (i < 0) return;
      const auto it = index.find(info.name);
      if (it == index.end())
        throw SnapshotError(snapshot.path + ": holds the parameter '" + info.name +
                            "', which the snapshot at step " + std::to_string(plan.step) +
                            " has not (snapshots of another model in one run directory?)");
      const at::Tensor theta = t.to(at::kDouble);
      for (std::size_t r = 0; r < out.size(); ++r) {
        const double x = out[r].solution.coefficients[static_cast<std::size_t>(i)];
        at::Tensor& sum = sums[r][it->second];
        if (!sum.defined()) {
          sum = theta * x;
        } else if (sum.sizes() != theta.sizes()) {
          throw SnapshotError(snapshot.path + ": parameter '" + info.name +
                              "' has another shape than in the snapshot at step " +
                              std::to_string(plan.step));
        } else {
          sum.add_(theta, x);
        }
      }
    });
  }
  for (std::size_t r = 0; r < out.size(); ++r) {
    for (std::size_t j = 0; j < names.size(); ++j) {
      if (!sums[r][j].defined())
        throw SnapshotError("no snapshot used holds the parameter '" + names[j] + "'");
      out[r].model_state.emplace_back(names[j], sums[r][j].to(at::kFloat));
      sums[r][j] = at::Tensor();  // memory stays at the float64 sums
    }
    out[r].model_state.insert(out[r].model_state.end(), buffers.begin(), buffers.end());
  }
  return out;
}

std::string reconstruction_config_yaml(const std::string& snapshot_config_yaml) {
  std::vector<std::string> unknown_keys;  // from another version of difftrain: dropped
  Config c = parse_stored_config(snapshot_config_yaml, "snapshot config", unknown_keys);
  c.training.ema_rates.clear();
  return to_yaml(c);
}

}  // namespace difftrain::train::phema
