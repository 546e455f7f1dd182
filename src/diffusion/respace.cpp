#include "diffusion/respace.hpp"

#include <ATen/ATen.h>

#include <charconv>
#include <cmath>
#include <set>
#include <stdexcept>

namespace difftrain::diffusion {
namespace {

[[noreturn]] void bad_spec(const std::string& spec, long T, const std::string& why) {
  throw std::invalid_argument("respacing '" + spec + "' for T = " + std::to_string(T) + ": " + why);
}

// A non-negative decimal integer, surrounding spaces allowed (as Python's int()).
long parse_count(const std::string& text, const std::string& spec, long T) {
  const auto first = text.find_first_not_of(' ');
  const auto last = text.find_last_not_of(' ');
  long value = -1;
  if (first != std::string::npos) {
    const char* begin = text.data() + first;
    const char* end = text.data() + last + 1;
    const auto [ptr, ec] = std::from_chars(begin, end, value);
    if (ec != std::errc() || ptr != end) value = -1;
  }
  if (value < 0)
    bad_spec(spec, T, "'" + text + "' is not a step count (expected e.g. ddim50, 250 or 10,10,10)");
  return value;
}

std::set<long> ddim_steps(long T, long count, const std::string& spec) {
  // The smallest stride whose range(0, T, stride) has exactly `count` elements.
  for (long stride = 1; stride < T; ++stride) {
    if ((T + stride - 1) / stride != count) continue;
    std::set<long> steps;
    for (long t = 0; t < T; t += stride)
      steps.insert(t);
    return steps;
  }
  bad_spec(spec, T, "no integer stride gives exactly " + std::to_string(count) + " steps");
}

std::set<long> section_steps(long T, const std::vector<long>& counts, const std::string& spec) {
  const long n = static_cast<long>(counts.size());
  const long size_per = T / n, extra = T % n;
  std::set<long> steps;
  long start = 0;
  for (long i = 0; i < n; ++i) {
    const long size = size_per + (i < extra ? 1 : 0);
    if (size < counts[i])
      bad_spec(spec, T,
               "section " + std::to_string(i) + " has " + std::to_string(size) +
                   " steps, too few for " + std::to_string(counts[i]));
    const double stride =
        counts[i] <= 1 ? 1.0 : static_cast<double>(size - 1) / static_cast<double>(counts[i] - 1);
    // Accumulated as improved-diffusion does, and rounded half to even as Python's round().
    double position = 0.0;
    for (long k = 0; k < counts[i]; ++k) {
      steps.insert(start + static_cast<long>(std::nearbyint(position)));
      position += stride;
    }
    start += size;
  }
  return steps;
}

}  // namespace

std::vector<long> space_timesteps(long T, const std::string& spec) {
  std::set<long> steps;
  if (spec.rfind("ddim", 0) == 0) {
    steps = ddim_steps(T, parse_count(spec.substr(4), spec, T), spec);
  } else {
    std::vector<long> counts;
    std::size_t begin = 0;
    for (;;) {
      const std::size_t comma = spec.find(',', begin);
      counts.push_back(parse_count(spec.substr(begin, comma - begin), spec, T));
      if (comma == std::string::npos) break;
      begin = comma + 1;
    }
    if (static_cast<long>(counts.size()) > T) bad_spec(spec, T, "more sections than timesteps");
    steps = section_steps(T, counts, spec);
  }
  if (steps.size() < 2)
    bad_spec(spec, T, "keeps " + std::to_string(steps.size()) + " step(s); at least 2 are needed");
  return {steps.begin(), steps.end()};
}

RespacedDiffusion respace(const GaussianDiffusion& base, const std::vector<long>& use_timesteps) {
  const at::Tensor abar = base.alphas_cumprod.to(at::kCPU);
  const auto* a = abar.data_ptr<double>();
  std::vector<double> betas;
  std::vector<int64_t> map;
  double last = 1.0;
  for (const long t : use_timesteps) {
    if (t < 0 || t >= base.num_timesteps || (!map.empty() && t <= map.back()))
      throw std::invalid_argument("respace: timestep " + std::to_string(t) +
                                  " is out of order or outside [0, " +
                                  std::to_string(base.num_timesteps) + ")");
    betas.push_back(1.0 - a[t] / last);
    last = a[t];
    map.push_back(t);
  }
  RespacedDiffusion r;
  r.diffusion = make_gaussian_diffusion(at::tensor(betas, at::kDouble), base.model_mean_type,
                                        base.model_var_type);
  r.diffusion = to_device(r.diffusion, base.betas.device());
  r.timestep_map = at::tensor(map, at::kLong);
  return r;
}

ModelFn respaced_model(const ModelFn& base_model, const at::Tensor& timestep_map) {
  return [base_model, timestep_map](const at::Tensor& x_t, const at::Tensor& t) {
    return base_model(x_t, timestep_map.to(t.device()).index_select(0, t));
  };
}

}  // namespace difftrain::diffusion
