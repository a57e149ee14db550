"""DDPM and DDIM samplers as precomputed per-step coefficients and one pure step function.

A sampler is a `SamplerPlan`: the timesteps it visits (descending) and, for each,
the coefficients of one update

    x_{t_prev} = coef_x0 * x0_hat + coef_eps * eps_hat + sigma * z,    z ~ N(0, I)

where x0_hat and eps_hat come from the network's output at (x_t, t). Both papers'
updates have this form:

- DDPM ancestral sampling (Ho et al. 2020, eq. 11 / Algorithm 2) draws from
  q(x_{t-1} | x_t, x0_hat) = N(mu-tilde, sigma^2) with mu-tilde from eq. 7,
  mu-tilde = coef1 * x0_hat + coef2 * x_t; writing x_t = sqrt(a_t) x0_hat + sqrt(1 - a_t) eps_hat
  gives coef_x0 = coef1 + coef2 sqrt(a_t) and coef_eps = coef2 sqrt(1 - a_t).
  sigma^2 is beta-tilde_t ("fixed small") or beta_t ("fixed large").
- DDIM (Song et al. 2020, eq. 12):
  x_{t_prev} = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z with
  sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev) (eq. 16).

Here a_t is alpha-bar_t, and the step after t = 0 lands on x_0 (a_prev = 1, sigma = 0).
Fewer steps than T use the sub-sequence's own betas, beta_i = 1 - a_{t_i} / a_{t_prev}
(improved-diffusion's respacing), so DDPM with fixed-small variance equals DDIM with eta = 1.
"""

from dataclasses import dataclass

import numpy as np
from keras import ops

SAMPLERS = ("ddpm", "ddim")
VARIANCES = ("fixed_small", "fixed_large")
SKIPS = ("uniform", "quadratic")


def ddim_timesteps(num_train_timesteps, steps, skip="uniform"):
    """The timesteps a `steps`-step sampler visits, in sampling order (descending).

    `uniform`: evenly spaced from T - 1 down to 0, both ends included.
    `quadratic`: DDIM's `(linspace(0, sqrt(0.8 T), S) ** 2)` truncated to integers;
    repeated values (near t = 0 for large S) are dropped, so fewer steps may remain.
    """
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(
            f"steps must be between 1 and the {num_train_timesteps} training timesteps. Received: steps={steps}"
        )
    if skip == "uniform":
        timesteps = np.round(np.linspace(0, num_train_timesteps - 1, steps)).astype(np.int64)
        if steps == 1:
            timesteps = np.array([num_train_timesteps - 1])
    elif skip == "quadratic":
        timesteps = (np.linspace(0, np.sqrt(num_train_timesteps * 0.8), steps) ** 2).astype(np.int64)
    else:
        raise ValueError(f"skip must be one of {SKIPS}. Received: skip={skip!r}")
    return np.unique(timesteps)[::-1].copy()


@dataclass(frozen=True, eq=False)
class SamplerPlan:
    """Per-step arrays, float64, indexed by step i in sampling order."""

    timesteps: np.ndarray  # t_i, descending
    sqrt_alphas_cumprod: np.ndarray  # sqrt(a_t)
    sqrt_one_minus_alphas_cumprod: np.ndarray  # sqrt(1 - a_t)
    coef_x0: np.ndarray
    coef_eps: np.ndarray
    sigma: np.ndarray

    def __len__(self):
        return len(self.timesteps)

    @property
    def stochastic(self):
        return bool(np.any(self.sigma > 0))

    def coefficients(self):
        """(steps, 5) float32: the per-step vector `denoise_step` takes."""
        return np.stack(
            [self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod, self.coef_x0, self.coef_eps, self.sigma],
            axis=1,
        ).astype(np.float32)


def _alphas_cumprod_pairs(schedule, timesteps):
    alpha_bar = schedule.alphas_cumprod[timesteps]
    alpha_bar_prev = np.append(schedule.alphas_cumprod[timesteps[1:]], 1.0)
    return alpha_bar, alpha_bar_prev


def ddpm_plan(schedule, steps=None, variance="fixed_small"):
    """Ancestral sampling, DDPM Algorithm 2, on all T steps or a uniform sub-sequence."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}. Received: variance={variance!r}")
    timesteps = ddim_timesteps(schedule.timesteps, steps or schedule.timesteps, "uniform")
    alpha_bar, alpha_bar_prev = _alphas_cumprod_pairs(schedule, timesteps)
    betas = 1.0 - alpha_bar / alpha_bar_prev
    # DDPM eq. 7.
    coef1 = betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar)
    coef2 = (1.0 - alpha_bar_prev) * np.sqrt(1.0 - betas) / (1.0 - alpha_bar)
    if variance == "fixed_small":
        sigma2 = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    else:
        sigma2 = betas.copy()
    sigma2[-1] = 0.0  # no noise on the last step (t = 0), as in Algorithm 2
    return SamplerPlan(
        timesteps=timesteps,
        sqrt_alphas_cumprod=np.sqrt(alpha_bar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alpha_bar),
        coef_x0=coef1 + coef2 * np.sqrt(alpha_bar),
        coef_eps=coef2 * np.sqrt(1.0 - alpha_bar),
        sigma=np.sqrt(sigma2),
    )


def ddim_plan(schedule, steps=50, eta=0.0, skip="uniform"):
    """Generalised (DDIM) sampling, Song et al. 2020 eq. 12 with sigma from eq. 16."""
    if eta < 0:
        raise ValueError(f"eta must be non-negative. Received: eta={eta}")
    timesteps = ddim_timesteps(schedule.timesteps, steps, skip)
    alpha_bar, alpha_bar_prev = _alphas_cumprod_pairs(schedule, timesteps)
    sigma = eta * np.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev))
    return SamplerPlan(
        timesteps=timesteps,
        sqrt_alphas_cumprod=np.sqrt(alpha_bar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alpha_bar),
        coef_x0=np.sqrt(alpha_bar_prev),
        coef_eps=np.sqrt(np.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0)),
        sigma=sigma,
    )


def make_plan(schedule, sampler="ddim", steps=50, eta=0.0, skip="uniform", variance="fixed_small"):
    if sampler == "ddpm":
        return ddpm_plan(schedule, steps, variance)
    if sampler == "ddim":
        return ddim_plan(schedule, steps, eta, skip)
    raise ValueError(f"sampler must be one of {SAMPLERS}. Received: sampler={sampler!r}")


def predict_start_and_noise(model_output, x_t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, prediction):
    """(x0_hat, eps_hat) from the network's output, for any of the three targets.

    x_t = sqrt(a) x0 + sqrt(1 - a) eps (DDPM eq. 4) and v = sqrt(a) eps - sqrt(1 - a) x0
    (Salimans & Ho 2022), so x0 = sqrt(a) x_t - sqrt(1 - a) v and eps = sqrt(1 - a) x_t + sqrt(a) v.
    """
    if prediction == "epsilon":
        eps = model_output
        return (x_t - sqrt_one_minus_alpha_bar * eps) / sqrt_alpha_bar, eps
    if prediction == "x0":
        x0 = model_output
        return x0, (x_t - sqrt_alpha_bar * x0) / sqrt_one_minus_alpha_bar
    if prediction == "v":
        v = model_output
        return sqrt_alpha_bar * x_t - sqrt_one_minus_alpha_bar * v, sqrt_one_minus_alpha_bar * x_t + sqrt_alpha_bar * v
    raise ValueError(f"Unknown prediction. Received: prediction={prediction!r}")


def guided_output(conditional, unconditional, guidance):
    """Classifier-free guidance (Ho & Salimans 2021, eq. 6): (1 + w) out(x, c) - w out(x, null)."""
    return (1.0 + guidance) * conditional - guidance * unconditional


def denoise_step(x_t, model_output, coefficients, noise, prediction="epsilon", clip_denoised=True):
    """One reverse step x_t -> x_{t_prev}; returns (x_{t_prev}, x0_hat).

    `coefficients` is one row of `SamplerPlan.coefficients()`. With `clip_denoised`, x0_hat is
    clipped to [-1, 1] and eps_hat recomputed from it (as improved-diffusion does), which for
    DDPM is the paper code's mu-tilde(x_t, clip(x0_hat)).
    """
    sqrt_alpha_bar, sqrt_one_minus_alpha_bar, coef_x0, coef_eps, sigma = (coefficients[i] for i in range(5))
    x0, eps = predict_start_and_noise(model_output, x_t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, prediction)
    if clip_denoised:
        x0 = ops.clip(x0, -1.0, 1.0)
        eps = (x_t - sqrt_alpha_bar * x0) / sqrt_one_minus_alpha_bar
    return coef_x0 * x0 + coef_eps * eps + sigma * noise, x0
