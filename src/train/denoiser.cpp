#include "train/denoiser.hpp"

#include <ATen/ATen.h>

#include <vector>

#include "train/config.hpp"

namespace difftrain::train {

at::Tensor Denoiser::operator()(const at::Tensor& x_t, const at::Tensor& t,
                                const at::Tensor& y) const {
  // The handle is const here, the module it shares is not: calling it is not a change of handle.
  return net.ptr()->forward(x_t, t.to(at::kFloat) * timestep_scale, y);
}

diffusion::ModelFn Denoiser::with_labels(const at::Tensor& y) const {
  return [denoiser = *this, y](const at::Tensor& x_t, const at::Tensor& t) {
    return denoiser(x_t, t, y);
  };
}

diffusion::ModelFn Denoiser::with_guidance(const at::Tensor& y, int64_t null_label, double scale,
                                           double rescale) const {
  if (scale == 1.0) return with_labels(y);
  if (scale == 0.0) return with_labels(at::full_like(y, null_label));
  return [denoiser = *this, y, null_label, scale, rescale](const at::Tensor& x_t,
                                                           const at::Tensor& t) {
    const at::Tensor out =
        denoiser(at::cat({x_t, x_t}), at::cat({t, t}), at::cat({y, at::full_like(y, null_label)}));
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

}  // namespace difftrain::train
