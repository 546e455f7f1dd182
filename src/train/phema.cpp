#include "train/phema.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <stdexcept>

#include "train/checkpoint.hpp"
#include "train/ema.hpp"

namespace difftrain::train::phema {

double gamma_to_sigma_rel(double gamma) {
  return std::sqrt((gamma + 1) / ((gamma + 2) * (gamma + 2) * (gamma + 3)));
}

double sigma_rel_to_gamma(double sigma_rel) {
  if (!(sigma_rel > 0 && sigma_rel < kMaxSigmaRel))
    throw std::invalid_argument(fmt::format(
        "sigma_rel {} is outside (0, 0.2887): wider averages have no power-function profile",
        sigma_rel));
  // s = sigma_rel^-2 > 12, so the cubic is negative at gamma = 0 and, since sigma_rel(gamma)
  // falls monotonically for gamma >= 0, has exactly one root there: the largest. Bisection
  // brackets it to the last bit.
  const double s = 1 / (sigma_rel * sigma_rel);
  const auto cubic = [s](double g) { return ((g + 7) * g + (16 - s)) * g + (12 - s); };
  double lo = 0, hi = 1;
  while (cubic(hi) < 0)
    hi *= 2;
  for (int i = 0; i < 200 && lo < hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (mid <= lo || mid >= hi) break;
    (cubic(mid) < 0 ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

double profile_dot(double t_a, double gamma_a, double t_b, double gamma_b) {
  const double e = t_a < t_b ? gamma_b : -gamma_a;
  return (gamma_a + 1) * (gamma_b + 1) * std::pow(t_a / t_b, e) /
         ((gamma_a + gamma_b + 1) * std::max(t_a, t_b));
}

PowerFunctionEma make_power_function_ema(const std::vector<double>& sigma_rels,
                                         const std::vector<at::Tensor>& params) {
  PowerFunctionEma ema;
  const auto device = params.empty() ? c10::Device(c10::kCPU) : params.front().device();
  ema.images = at::zeros({}, at::TensorOptions(device).dtype(at::kDouble));
  for (double sigma_rel : sigma_rels) {
    Profile p{sigma_rel, sigma_rel_to_gamma(sigma_rel), {}};
    for (const at::Tensor& param : params)
      p.params.push_back(param.detach().clone());
    ema.profiles.push_back(std::move(p));
  }
  return ema;
}

void update(PowerFunctionEma& ema, const std::vector<at::Tensor>& params, int64_t batch_size,
            const at::Tensor& skip) {
  if (ema.profiles.empty() || params.empty()) return;
  // b, the images this step adds to t: 0 when it was skipped.
  const at::Tensor b = (1.0 - skip.to(at::kDouble)) * static_cast<double>(batch_size);
  ema.images.add_(b);
  // b / t: 1 at the first step (beta = 0, the average starts at theta), 0 on a skipped step
  // (beta = 1). The clamp only keeps a skipped first step (t = 0) from dividing by zero.
  const at::Tensor fraction = b / ema.images.clamp_min(1.0);
  for (Profile& p : ema.profiles) {
    // 1 - beta = 1 - (1 - b / t)^(gamma + 1), one 0-dim weight for every tensor (EDM2 Eq. 127).
    const at::Tensor weight =
        (1.0 - (1.0 - fraction).pow(p.gamma + 1)).to(p.params.front().scalar_type());
    move_averages(p.params, params, weight, average_kernels_for(params.front().device()));
  }
}

void append_replicated_state(const PowerFunctionEma& ema, std::vector<at::Tensor>& state) {
  if (ema.profiles.empty()) return;
  state.push_back(ema.images);
  for (const Profile& p : ema.profiles)
    state.insert(state.end(), p.params.begin(), p.params.end());
}

namespace {

std::string tensor_key(std::size_t profile, std::size_t param) {
  return "phema/" + std::to_string(profile) + "/" + std::to_string(param);
}

at::Tensor read_tensor(torch::serialize::InputArchive& a, const std::string& path,
                       const std::string& key) {
  at::Tensor t;
  if (!a.try_read(key, t)) throw CheckpointError(path + ": checkpoint has no '" + key + "'");
  return t;
}

void copy_checked(const std::string& path, const std::string& key, at::Tensor& dst,
                  const at::Tensor& src) {
  if (dst.sizes() != src.sizes())
    throw CheckpointError(path + ": '" + key +
                          "' has another shape in the checkpoint than in the " +
                          "model (a checkpoint of another config?)");
  torch::NoGradGuard no_grad;
  dst.copy_(src);
}

}  // namespace

void save_state(torch::serialize::OutputArchive& a, const PowerFunctionEma& ema) {
  if (ema.profiles.empty()) return;
  std::vector<double> sigma_rels;
  for (const Profile& p : ema.profiles)
    sigma_rels.push_back(p.sigma_rel);
  a.write("phema/sigma_rels", at::tensor(sigma_rels, at::kDouble));
  a.write("phema/images", ema.images);
  for (std::size_t k = 0; k < ema.profiles.size(); ++k)
    for (std::size_t j = 0; j < ema.profiles[k].params.size(); ++j)
      a.write(tensor_key(k, j), ema.profiles[k].params[j]);
}

bool load_state(torch::serialize::InputArchive& a, const std::string& path, PowerFunctionEma& ema) {
  if (ema.profiles.empty()) return true;
  std::vector<double> wanted;
  for (const Profile& p : ema.profiles)
    wanted.push_back(p.sigma_rel);
  at::Tensor stored;
  if (!a.try_read("phema/sigma_rels", stored)) return false;
  const std::vector<double> had(stored.data_ptr<double>(),
                                stored.data_ptr<double>() + stored.numel());
  if (had != wanted)
    throw CheckpointError(path + ": checkpoint tracked the post-hoc EMA profiles sigma_rel " +
                          format_sigma_rels(had) + ", the config " + format_sigma_rels(wanted) +
                          " (training.phema.sigma_rels must stay the same across a resume)");
  copy_checked(path, "phema/images", ema.images, read_tensor(a, path, "phema/images"));
  for (std::size_t k = 0; k < ema.profiles.size(); ++k)
    for (std::size_t j = 0; j < ema.profiles[k].params.size(); ++j)
      copy_checked(path, tensor_key(k, j), ema.profiles[k].params[j],
                   read_tensor(a, path, tensor_key(k, j)));
  return true;
}

std::string format_sigma_rels(const std::vector<double>& sigma_rels) {
  std::string s;
  for (double v : sigma_rels)
    s += (s.empty() ? "" : ", ") + fmt::format("{}", v);
  return s.empty() ? "none" : s;
}

}  // namespace difftrain::train::phema
