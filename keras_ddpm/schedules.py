"""Noise schedules: betas and every quantity derived from them, in float64.

Notation (Ho et al. 2020, section 2; names as in improved-diffusion):
    betas[t]               beta_t, t = 0..T-1 (the paper's t = 1..T)
    alphas[t]              alpha_t = 1 - beta_t
    alphas_cumprod[t]      alpha-bar_t = prod_{s<=t} alpha_s
    alphas_cumprod_prev[t] alpha-bar_{t-1}, with alpha-bar_{-1} = 1
    posterior_*            q(x_{t-1} | x_t, x_0), DDPM eqs. 6-7
"""

import math
from dataclasses import dataclass

import numpy as np


def linear_betas(timesteps, beta_start=1e-4, beta_end=0.02):
    """DDPM's schedule: betas evenly spaced from beta_start to beta_end."""
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def cosine_betas(timesteps, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal 2021, eq. 17: alpha-bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2).

    beta_t = 1 - alpha-bar(t+1) / alpha-bar(t), clipped at `max_beta`.
    """
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    alpha_bar = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """An immutable schedule; every array is float64 of shape (T,)."""

    betas: np.ndarray

    def __post_init__(self):
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must be a 1-D array with every value in (0, 1).")
        betas = betas.copy()
        betas.setflags(write=False)
        object.__setattr__(self, "betas", betas)
        derived = self._derive(betas)
        for name, value in derived.items():
            value.setflags(write=False)
            object.__setattr__(self, name, value)

    @staticmethod
    def _derive(betas):
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        # DDPM eq. 7: beta-tilde_t and the two coefficients of mu-tilde_t(x_t, x_0).
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        return {
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "posterior_variance": posterior_variance,
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev)
            * np.sqrt(alphas)
            / (1.0 - alphas_cumprod),
        }

    @property
    def timesteps(self):
        return len(self.betas)

    @classmethod
    def from_config(cls, config):
        """Builds the schedule a `DiffusionConfig` names."""
        if config.schedule == "linear":
            return cls(linear_betas(config.timesteps, config.beta_start, config.beta_end))
        if config.schedule == "cosine":
            return cls(cosine_betas(config.timesteps))
        raise ValueError(f"Unknown schedule. Received: schedule={config.schedule!r}")


def min_snr_weights(alphas_cumprod, gamma, prediction="epsilon"):
    """Min-SNR-gamma loss weights per timestep (Hang et al. 2023, section 3.4), float64.

    With SNR(t) = alpha-bar_t / (1 - alpha-bar_t), the squared error of a target weighted so that
    the loss is min(SNR(t), gamma) ||x_0 - x_0_hat||^2: epsilon's error is SNR(t) times x_0's,
    and v's (v = sqrt(a) eps - sqrt(1 - a) x_0) is (SNR(t) + 1) times x_0's.
    """
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clipped = np.minimum(snr, gamma)
    if prediction == "epsilon":
        return clipped / snr
    if prediction == "x0":
        return clipped
    if prediction == "v":
        return clipped / (snr + 1.0)
    raise ValueError(f"Unknown prediction. Received: prediction={prediction!r}")
