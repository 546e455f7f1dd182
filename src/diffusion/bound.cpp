#include "diffusion/bound.hpp"

#include <ATen/ATen.h>

#include <vector>

#include "diffusion/distributions.hpp"
#include "diffusion/gaussian_diffusion.hpp"

namespace difftrain::diffusion {

BoundTerms calc_bpd_loop(const GaussianDiffusion& d, const ModelFn& model,
                         const at::Tensor& x_start, bool clip_denoised, const NoiseFn& noise,
                         const std::function<void(long)>& on_step) {
  const long T = d.num_timesteps;
  std::vector<at::Tensor> vb(T), xstart_mse(T), mse(T);
  for (long step = T - 1; step >= 0; --step) {
    const at::Tensor t = at::full({x_start.size(0)}, step, x_start.options().dtype(at::kLong));
    const at::Tensor eps = noise(step);
    const at::Tensor x_t = q_sample(d, x_start, t, eps);
    const at::Tensor out = model(x_t, t);
    const VbTerms terms = vb_terms_bpd(d, out, x_start, x_t, t, clip_denoised);
    vb[step] = terms.bits;
    xstart_mse[step] = mean_flat((terms.pred_xstart - x_start).square());
    mse[step] = mean_flat((predict_eps_from_xstart(d, x_t, t, terms.pred_xstart) - eps).square());
    if (on_step) on_step(step);
  }
  BoundTerms b;
  b.vb = at::stack(vb, 1);
  b.xstart_mse = at::stack(xstart_mse, 1);
  b.mse = at::stack(mse, 1);
  b.prior_bpd = prior_bpd(d, x_start);
  b.total_bpd = b.vb.sum(1) + b.prior_bpd;
  return b;
}

}  // namespace difftrain::diffusion
