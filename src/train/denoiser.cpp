#include "train/denoiser.hpp"

#include <ATen/ATen.h>

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

Denoiser make_denoiser(model::UNet net, const Config& config) {
  const auto& d = config.diffusion;
  return {std::move(net), d.rescale_timesteps ? 1000.0 / static_cast<double>(d.steps) : 1.0};
}

}  // namespace difftrain::train
