#include "train/denoiser.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "train/config.hpp"

namespace difftrain::train {

at::Tensor Denoiser::operator()(const at::Tensor& x_t, const at::Tensor& t, const at::Tensor& y,
                                const at::Tensor& low_res, const at::Tensor& low_res_t) const {
  // The level is a timestep of the same diffusion: the network sees it on t's scale.
  at::Tensor level;
  if (net->config().low_res_noise)
    level =
        (low_res_t.defined() ? low_res_t : at::full({x_t.size(0)}, low_res_noise_t, t.options()))
            .to(at::kFloat) *
        timestep_scale;
  // The handle is const here, the module it shares is not: calling it is not a change of handle.
  return net.ptr()->forward(x_t, t.to(at::kFloat) * timestep_scale, y, low_res, level);
}

diffusion::ModelFn Denoiser::with_labels(const at::Tensor& y, const at::Tensor& low_res) const {
  return [denoiser = *this, y, low_res](const at::Tensor& x_t, const at::Tensor& t) {
    return denoiser(x_t, t, y, low_res);
  };
}

at::Tensor Denoiser::low_res_of(const at::Tensor& x_start) const {
  const int64_t size = net->config().low_res_size;
  if (size == 0) return {};
  return at::adaptive_avg_pool2d(x_start, {size, size});
}

diffusion::ModelFn Denoiser::with_guidance(const at::Tensor& y, int64_t null_label, double scale,
                                           double rescale, const at::Tensor& low_res) const {
  if (scale == 1.0) return with_labels(y, low_res);
  if (scale == 0.0) return with_labels(at::full_like(y, null_label), low_res);
  return [denoiser = *this, y, null_label, scale, rescale, low_res](const at::Tensor& x_t,
                                                                    const at::Tensor& t) {
    const at::Tensor out =
        denoiser(at::cat({x_t, x_t}), at::cat({t, t}), at::cat({y, at::full_like(y, null_label)}),
                 low_res.defined() ? at::cat({low_res, low_res}) : at::Tensor());
    const int64_t n = x_t.size(0), C = x_t.size(1);
    const at::Tensor cond = out.narrow(0, 0, n), uncond = out.narrow(0, n, n);
    const at::Tensor mean_cond = cond.narrow(1, 0, C), mean_uncond = uncond.narrow(1, 0, C);
    at::Tensor guided = mean_uncond + scale * (mean_cond - mean_uncond);
    if (rescale > 0) {
      const std::vector<int64_t> per_sample{1, 2, 3};
      const at::Tensor rescaled = guided * (mean_cond.std(per_sample, /*unbiased=*/true, true) /
                                            guided.std(per_sample, /*unbiased=*/true, true));
      guided = rescale * rescaled + (1 - rescale) * guided;
    }
    if (out.size(1) == C) return guided;
    return at::cat({guided, cond.narrow(1, C, out.size(1) - C)}, 1);
  };
}

Denoiser make_denoiser(model::UNet net, const Config& config) {
  const auto& d = config.diffusion;
  return {std::move(net), d.rescale_timesteps ? 1000.0 / static_cast<double>(d.steps) : 1.0};
}

int64_t low_res_noise_level(double fraction, int64_t num_timesteps) {
  return std::llround(fraction * static_cast<double>(num_timesteps - 1));
}

}  // namespace difftrain::train
