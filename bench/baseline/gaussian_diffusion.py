"""The hybrid training loss of improved-diffusion (gaussian_diffusion.py training_losses with
LossType.RESCALED_MSE, ModelMeanType.EPSILON, ModelVarType.LEARNED_RANGE), in torch float64
tables instead of numpy (numpy is not installed; the arithmetic is the same).

loss = mse(eps, eps_theta) + vb * T / 1000, where vb is L_t (bits/dim) of the learned variance
with the mean's gradient stopped (the "stop-grad mean" of Nichol & Dhariwal eq. 16).
"""
import math

import torch as th


def _extract(arr, timesteps, broadcast_shape):
    res = arr.to(device=timesteps.device)[timesteps].float()
    while len(res.shape) < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)


def mean_flat(tensor):
    return tensor.mean(dim=list(range(1, len(tensor.shape))))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + th.exp(logvar1 - logvar2)
                  + ((mean1 - mean2) ** 2) * th.exp(-logvar2))


def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + th.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * th.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    centered_x = x - means
    inv_stdv = th.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = th.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = th.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return th.where(x < -0.999, log_cdf_plus,
                    th.where(x > 0.999, log_one_minus_cdf_min,
                             th.log(cdf_delta.clamp(min=1e-12))))


class GaussianDiffusion:
    def __init__(self, betas, rescale_timesteps=True):
        betas = betas.double()
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])
        self.rescale_timesteps = rescale_timesteps
        alphas = 1.0 - betas
        self.alphas_cumprod = th.cumprod(alphas, 0)
        self.alphas_cumprod_prev = th.cat([th.ones(1, dtype=th.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = th.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = th.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = th.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = th.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = (betas * (1.0 - self.alphas_cumprod_prev)
                                   / (1.0 - self.alphas_cumprod))
        self.posterior_log_variance_clipped = th.log(
            th.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = (betas * th.sqrt(self.alphas_cumprod_prev)
                                     / (1.0 - self.alphas_cumprod))
        self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) * th.sqrt(alphas)
                                     / (1.0 - self.alphas_cumprod))
        self.log_betas = th.log(betas)

    def q_sample(self, x_start, t, noise):
        return (_extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        mean = (_extract(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + _extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        log_var = _extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, log_var

    def p_mean_variance(self, model_output, x_t, t):
        C = x_t.shape[1]
        eps, var_values = th.split(model_output, C, dim=1)
        min_log = _extract(self.posterior_log_variance_clipped, t, x_t.shape)
        max_log = _extract(self.log_betas, t, x_t.shape)
        frac = (var_values + 1) / 2
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = (_extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                       - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)
        mean, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return mean, log_variance

    def _vb_terms_bpd(self, model_output, x_start, x_t, t):
        true_mean, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        mean, log_variance = self.p_mean_variance(model_output, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance)) / math.log(2.0)
        decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
            x_start, means=mean, log_scales=0.5 * log_variance)) / math.log(2.0)
        return th.where((t == 0), decoder_nll, kl)

    def scale_timesteps(self, t):
        return t.float() * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t

    def training_losses(self, model, x_start, t, noise, model_kwargs=None):
        """improved-diffusion's training_losses for the hybrid objective (RESCALED_MSE)."""
        x_t = self.q_sample(x_start, t, noise)
        model_output = model(x_t, self.scale_timesteps(t), **(model_kwargs or {}))
        return self.losses_from_output(model_output, x_start, x_t, t, noise)

    def losses_from_output(self, model_output, x_start, x_t, t, noise):
        model_output = model_output.float()
        C = x_t.shape[1]
        eps_out, var_values = th.split(model_output, C, dim=1)
        frozen_out = th.cat([eps_out.detach(), var_values], dim=1)
        vb = self._vb_terms_bpd(frozen_out, x_start, x_t, t) * (self.num_timesteps / 1000.0)
        mse = mean_flat((noise - eps_out) ** 2)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
