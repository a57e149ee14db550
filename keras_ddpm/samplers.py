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

- DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) adds the previous step's
  x0_hat: x_{t_prev} = coef_x0 * x0_hat + coef_eps * eps_hat + coef_x0_prev * x0_hat_prev.

Here a_t is alpha-bar_t, and the step after t = 0 lands on x_0 (a_prev = 1, sigma = 0).
Fewer steps than T use the sub-sequence's own betas, beta_i = 1 - a_{t_i} / a_{t_prev}
(improved-diffusion's respacing), so DDPM with fixed-small variance equals DDIM with eta = 1.

A plan's per-step numbers travel as one (steps, 8) table (`SamplerPlan.coefficients()`), whose
rows a step reads as a `StepCoefficients`.
`reverse_steps` runs a range of steps of a plan as one `keras.ops.fori_loop` over any
`model_fn(x_t, t, *context)`, so the whole chain can be compiled once (see `backend.compile_loop`);
`run_plan` drives it (noise, callbacks) and works on an uncompiled function as well.
"""

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_ddpm.sampling_options import SAMPLERS
from keras_ddpm.sampling_options import SKIPS
from keras_ddpm.sampling_options import VARIANCES
from keras_ddpm.sampling_options import default_skip


def ddim_timesteps(num_train_timesteps, steps, skip="uniform", start=None):
    """The timesteps a `steps`-step sampler visits, in sampling order (descending).

    With T' = T (or `start` + 1) training timesteps to cover:
    `uniform`: DDIM's `range(0, T', T' // S)` (Song et al. 2020, the code behind Table 1;
        diffusers' DDIMScheduler "leading"): 900, 800, ..., 0 for S = 10 of T = 1000. When S
        does not divide T' this gives a few more than S steps, as DDIM's code does.
    `quadratic`: DDIM's `(linspace(0, sqrt(0.8 T), S) ** 2)` truncated to integers
        (`linspace(0, sqrt(start), S) ** 2` from a given `start`).
    `linspace`: `round(linspace(0, T' - 1, S))`, both ends included (diffusers' "linspace").
    `trailing`: `round(arange(T', 0, -T' / S)) - 1`, from T' - 1 down to T' / S - 1
        (diffusers' "trailing", Lin et al. 2023 table 2).
    Repeated values (`quadratic` near t = 0 for large S) are dropped, so fewer steps may remain:
    with eta = 0 a DDIM step from t to the same t returns its input, so the images are the same.
    `start` begins the chain at an intermediate timestep (a noised real image); `steps` is
    then capped at start + 1.
    """
    if start is not None:
        if not 0 <= start < num_train_timesteps:
            raise ValueError(
                f"start must be a timestep in [0, {num_train_timesteps - 1}]. "
                f"Received: start={start}"
            )
        steps = min(steps, start + 1)
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(
            f"steps must be between 1 and the {num_train_timesteps} training timesteps. "
            f"Received: steps={steps}"
        )
    span = num_train_timesteps if start is None else start + 1  # T'
    if skip == "uniform":
        timesteps = np.arange(0, span, span // steps)
    elif skip == "quadratic":
        end = np.sqrt(num_train_timesteps * 0.8) if start is None else np.sqrt(start)
        timesteps = (np.linspace(0, end, steps) ** 2).astype(np.int64)
    elif skip == "linspace":
        timesteps = np.round(np.linspace(0, span - 1, steps)).astype(np.int64)
        if steps == 1:
            timesteps = np.array([span - 1])
    elif skip == "trailing":
        timesteps = np.round(np.arange(span, 0, -span / steps)).astype(np.int64) - 1
    else:
        raise ValueError(f"skip must be one of {SKIPS}. Received: skip={skip!r}")
    return np.unique(timesteps.astype(np.int64))[::-1].copy()


def logsnr_timesteps(schedule, steps, start=None):
    """`steps` timesteps evenly spaced in log-SNR, lambda_t = log(sqrt(a_t) / sqrt(1 - a_t)), from
    T - 1 (or `start`) down to 0, each the nearest integer timestep (DPM-Solver's recommended
    "logSNR" spacing, Lu et al. 2022 sec. 3.3); repeats are dropped, as for `quadratic`."""
    last = schedule.timesteps - 1 if start is None else start
    ddim_timesteps(schedule.timesteps, steps, "linspace", start)  # validates steps and start
    lambdas = 0.5 * (np.log(schedule.alphas_cumprod) - np.log1p(-schedule.alphas_cumprod))
    targets = np.linspace(lambdas[last], lambdas[0], min(steps, last + 1))
    nearest = np.abs(lambdas[None, : last + 1] - targets[:, None]).argmin(axis=1)
    return np.unique(nearest)[::-1].copy()


def sampler_timesteps(schedule, steps, skip="uniform", start=None):
    """`logsnr_timesteps` for "logsnr", `ddim_timesteps` for the other spacings."""
    if skip == "logsnr":
        return logsnr_timesteps(schedule, steps, start)
    return ddim_timesteps(schedule.timesteps, steps, skip, start)


class StepCoefficients(NamedTuple):
    """The numbers of one reverse step: a row of `SamplerPlan.coefficients()`, by name.

    The update is x_{t_prev} = coef_x0 * x0_hat + coef_eps * eps_hat + sigma * z
    (+ coef_x0_prev * x0_hat_prev for multistep solvers), with a = alpha-bar at t and
    a_prev = alpha-bar at the timestep the step lands on (1 after t = 0).
    """

    sqrt_alphas_cumprod: object  # sqrt(a)
    sqrt_one_minus_alphas_cumprod: object  # sqrt(1 - a)
    coef_x0: object
    coef_eps: object
    sigma: object
    coef_x0_prev: object  # 0 for one-step samplers
    sqrt_alphas_cumprod_prev: object  # sqrt(a_prev): noises known pixels to the next timestep
    sqrt_one_minus_alphas_cumprod_prev: object  # sqrt(1 - a_prev)

    @classmethod
    def from_row(cls, row):
        """The named entries of one row (a tensor) of the table."""
        return cls(*ops.unstack(row, num=len(cls._fields)))


@dataclass(frozen=True, eq=False)
class SamplerPlan:
    """Per-step arrays, float64, indexed by step i in sampling order."""

    timesteps: np.ndarray  # t_i, descending
    sqrt_alphas_cumprod: np.ndarray  # sqrt(a_t)
    sqrt_one_minus_alphas_cumprod: np.ndarray  # sqrt(1 - a_t)
    coef_x0: np.ndarray
    coef_eps: np.ndarray
    sigma: np.ndarray
    coef_x0_prev: np.ndarray = None  # multistep solvers: weight of the previous step's x0_hat
    alphas_cumprod_prev: np.ndarray = None  # a at the timestep each step lands on (1 after t = 0)

    def __len__(self):
        return len(self.timesteps)

    @property
    def stochastic(self):
        return bool(np.any(self.sigma > 0))

    def coefficients(self):
        """(steps, 8) float32: one row per step, its columns the fields of `StepCoefficients`."""
        zeros = np.zeros(len(self))
        a_prev = self.alphas_cumprod_prev
        a_prev = np.ones(len(self)) if a_prev is None else a_prev
        columns = StepCoefficients(
            sqrt_alphas_cumprod=self.sqrt_alphas_cumprod,
            sqrt_one_minus_alphas_cumprod=self.sqrt_one_minus_alphas_cumprod,
            coef_x0=self.coef_x0,
            coef_eps=self.coef_eps,
            sigma=self.sigma,
            coef_x0_prev=zeros if self.coef_x0_prev is None else self.coef_x0_prev,
            sqrt_alphas_cumprod_prev=np.sqrt(a_prev),
            sqrt_one_minus_alphas_cumprod_prev=np.sqrt(1.0 - a_prev),
        )
        return np.stack(columns, axis=1).astype(np.float32)


def _alphas_cumprod_pairs(schedule, timesteps):
    alpha_bar = schedule.alphas_cumprod[timesteps]
    alpha_bar_prev = np.append(schedule.alphas_cumprod[timesteps[1:]], 1.0)
    return alpha_bar, alpha_bar_prev


def ddpm_plan(schedule, steps=None, variance="fixed_small", start=None, skip="linspace"):
    """Ancestral sampling, DDPM Algorithm 2, on all T steps or a sub-sequence (by default evenly
    spaced from T - 1 down to 0, `linspace`), its betas recomputed from alpha-bar as in Nichol &
    Dhariwal 2021 sec. 4."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}. Received: variance={variance!r}")
    timesteps = sampler_timesteps(schedule, steps or schedule.timesteps, skip, start)
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
        alphas_cumprod_prev=alpha_bar_prev,
    )


def ddim_plan(schedule, steps=50, eta=0.0, skip="uniform", start=None):
    """Generalised (DDIM) sampling, Song et al. 2020 eq. 12 with sigma from eq. 16."""
    if eta < 0:
        raise ValueError(f"eta must be non-negative. Received: eta={eta}")
    timesteps = sampler_timesteps(schedule, steps, skip, start)
    alpha_bar, alpha_bar_prev = _alphas_cumprod_pairs(schedule, timesteps)
    sigma = eta * np.sqrt(
        (1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev)
    )
    return SamplerPlan(
        timesteps=timesteps,
        sqrt_alphas_cumprod=np.sqrt(alpha_bar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alpha_bar),
        coef_x0=np.sqrt(alpha_bar_prev),
        coef_eps=np.sqrt(np.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0)),
        sigma=sigma,
        alphas_cumprod_prev=alpha_bar_prev,
    )


def dpm_solver_plan(schedule, steps=20, skip="logsnr", start=None):
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv:2211.01095), Algorithm 2: multistep, second order,
    in data (x0) prediction; deterministic (it solves the probability-flow ODE).

    Notation: alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t), lambda_t = log(alpha_t / sigma_t),
    h_i = lambda_{t_prev} - lambda_{t_i}, r_i = h_{i-1} / h_i. Step i:
        x_{t_prev} = (sigma_prev / sigma_t) x_t + alpha_prev (1 - e^{-h}) D_i,
        D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1},
    and with x_t = alpha_t x0_i + sigma_t eps_i (sigma_prev / sigma_t) x_t = alpha_prev e^{-h} x0_i
    + sigma_prev eps_i. The first step (no history) and the last one (onto sigma = 0, where
    h is infinite) are first order, D = x0_i, i.e. a DDIM eta = 0 step (as diffusers'
    `lower_order_final` with `final_sigmas_type="zero"`).

    Timesteps (`skip`): "logsnr" (default; evenly spaced in lambda down to t = 0, the paper's
    choice), "linspace": `steps` evaluations at linspace(T - 1, 0, steps + 1) without t = 0, the
    last step landing on x_0 (diffusers' layout; a second-order step onto t = 0 from an evenly
    spaced grid would cross most of lambda's range), or any other `ddim_timesteps` spacing.
    """
    skip = skip or default_skip("dpm_solver")
    limit = schedule.timesteps if start is None else start + 1
    if skip == "linspace" and steps < limit:
        timesteps = ddim_timesteps(schedule.timesteps, steps + 1, skip, start)[:-1]
    else:
        timesteps = sampler_timesteps(schedule, steps, skip, start)
    alpha_bar, alpha_bar_prev = _alphas_cumprod_pairs(schedule, timesteps)
    alpha, sigma = np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)
    alpha_prev, sigma_prev = np.sqrt(alpha_bar_prev), np.sqrt(1.0 - alpha_bar_prev)
    exp_neg_h = (sigma_prev / alpha_prev) / (sigma / alpha)  # e^{-h}: 0 on the step onto sigma = 0
    lambdas = np.log(alpha / sigma)
    h = np.log(alpha_prev[:-1] / sigma_prev[:-1]) - lambdas[:-1]
    second_order = np.zeros(len(timesteps), dtype=bool)
    second_order[1:-1] = True
    half_inverse_r = np.zeros(len(timesteps))  # 1 / (2 r_i)
    if len(timesteps) > 2:
        half_inverse_r[1:-1] = h[1:] / (2.0 * h[:-1])
    half_inverse_r = np.where(second_order, half_inverse_r, 0.0)
    return SamplerPlan(
        timesteps=timesteps,
        sqrt_alphas_cumprod=alpha,
        sqrt_one_minus_alphas_cumprod=sigma,
        coef_x0=alpha_prev * (exp_neg_h + (1.0 - exp_neg_h) * (1.0 + half_inverse_r)),
        coef_eps=sigma_prev,
        sigma=np.zeros(len(timesteps)),
        coef_x0_prev=-alpha_prev * (1.0 - exp_neg_h) * half_inverse_r,
        alphas_cumprod_prev=alpha_bar_prev,
    )


def ddim_inversion_plan(schedule, steps=50, skip="uniform"):
    """Deterministic DDIM inversion (Song et al. 2020 sec. 4.3, eq. 13 run forwards): from a clean
    image at t = 0 up to x at t = T - 1 along the reverse of `ddim_plan`'s timesteps, so that
    `ddim_plan(steps)` from the result reconstructs the image (exactly in the ODE limit).
    Step i evaluates the network at t_i and lands on t_{i+1} > t_i."""
    ascending = ddim_timesteps(schedule.timesteps, steps, skip)[::-1].copy()
    if len(ascending) < 2:
        raise ValueError(f"DDIM inversion needs at least 2 steps. Received: steps={steps}")
    alpha_bar = schedule.alphas_cumprod[ascending[:-1]]
    alpha_bar_next = schedule.alphas_cumprod[ascending[1:]]
    return SamplerPlan(
        timesteps=ascending[:-1],
        sqrt_alphas_cumprod=np.sqrt(alpha_bar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alpha_bar),
        coef_x0=np.sqrt(alpha_bar_next),
        coef_eps=np.sqrt(1.0 - alpha_bar_next),
        sigma=np.zeros(len(ascending) - 1),
        alphas_cumprod_prev=alpha_bar_next,
    )


def make_plan(
    schedule, sampler="ddim", steps=50, eta=0.0, skip=None, variance="fixed_small", start=None
):
    """The plan of a named sampler; `start` begins the chain at that timestep instead of T - 1.
    `skip=None` is each sampler's default (`sampling_options.default_skip`): "uniform" for ddim,
    "linspace" for ddpm, "logsnr" for dpm_solver."""
    skip = skip or default_skip(sampler)
    if sampler == "ddpm":
        return ddpm_plan(schedule, steps, variance, start, skip)
    if sampler == "ddim":
        return ddim_plan(schedule, steps, eta, skip, start)
    if sampler == "dpm_solver":
        return dpm_solver_plan(schedule, steps, skip, start)
    raise ValueError(f"sampler must be one of {SAMPLERS}. Received: sampler={sampler!r}")


@dataclass(frozen=True)
class SamplerSettings:
    """Which reverse chain `DiffusionModel.generate` runs: its keyword arguments besides the
    images, labels, callbacks and output format.

    sampler: "ddim", "ddpm" or "dpm_solver"; steps: its steps (`ddim_timesteps`' S); eta:
    DDIM's eta; skip: the spacing (None: the sampler's default, `default_skip`); variance: DDPM's
    sigma_t^2; clip_denoised: clip x0_hat to [-1, 1] at every step; use_ema: sample with the EMA
    weights (default) or the trained ones.
    """

    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    skip: str = None
    variance: str = "fixed_small"
    clip_denoised: bool = True
    use_ema: bool = True

    @classmethod
    def names(cls):
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def pick(cls, options):
        """The settings among `options`, a mapping that may hold other `generate` arguments."""
        return cls(**{name: options[name] for name in cls.names() if name in options})

    def plan(self, schedule, start=None):
        """The `SamplerPlan` of these settings, from `start` (a timestep) or from T - 1."""
        return make_plan(
            schedule, self.sampler, self.steps, self.eta, self.skip, self.variance, start
        )


def predict_start_and_noise(
    model_output, x_t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, prediction
):
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
        return (
            sqrt_alpha_bar * x_t - sqrt_one_minus_alpha_bar * v,
            sqrt_one_minus_alpha_bar * x_t + sqrt_alpha_bar * v,
        )
    raise ValueError(f"Unknown prediction. Received: prediction={prediction!r}")


def guided_output(conditional, unconditional, guidance):
    """Classifier-free guidance (Ho & Salimans 2021, eq. 6): (1 + w) out(x, c) - w out(x, null)."""
    return (1.0 + guidance) * conditional - guidance * unconditional


def denoise_step(
    x_t, model_output, coefficients, noise, prediction="epsilon", clip_denoised=True, x0_prev=None
):
    """One reverse step x_t -> x_{t_prev}; returns (x_{t_prev}, x0_hat).

    `coefficients` is the step's `StepCoefficients`; multistep solvers pass `x0_prev`, the
    previous step's x0_hat. `noise` may be None for a deterministic step. With `clip_denoised`,
    x0_hat is clipped to [-1, 1] and eps_hat recomputed from it (as improved-diffusion does),
    which for DDPM is the paper code's mu-tilde(x_t, clip(x0_hat)).
    """
    sqrt_alpha_bar = coefficients.sqrt_alphas_cumprod
    sqrt_one_minus_alpha_bar = coefficients.sqrt_one_minus_alphas_cumprod
    x0, eps = predict_start_and_noise(
        model_output, x_t, sqrt_alpha_bar, sqrt_one_minus_alpha_bar, prediction
    )
    if clip_denoised:
        x0 = ops.clip(x0, -1.0, 1.0)
        eps = (x_t - sqrt_alpha_bar * x0) / sqrt_one_minus_alpha_bar
    x_prev = coefficients.coef_x0 * x0 + coefficients.coef_eps * eps
    if noise is not None:
        x_prev = x_prev + coefficients.sigma * noise
    if x0_prev is not None:
        x_prev = x_prev + coefficients.coef_x0_prev * x0_prev
    return x_prev, x0


class ChainTensors(NamedTuple):
    """The tensors `reverse_steps` reads for a range of a plan's steps.

    timesteps, coefficients: `plan.timesteps` (int32) and `plan.coefficients()` (one
        `StepCoefficients` row a step), zero-padded alike.
    noises: None (deterministic) or z for steps start.. (shape (L, *x.shape), L >= stop - start).
    known, mask, known_noises: inpainting by replacement (None otherwise): after each step,
        pixels where `mask` is 1 are set to `known` noised to the next timestep with
        `known_noises` (shaped as `noises`).
    """

    timesteps: object
    coefficients: object
    noises: object = None
    known: object = None
    mask: object = None
    known_noises: object = None


def reverse_steps(
    model_fn, x, x0, start, stop, chain, context=(), prediction="epsilon", clip_denoised=True
):
    """Steps `start`..`stop - 1` of a plan as one `ops.fori_loop`; returns (x, x0_hat of the last
    step).

    Pure and traceable (bounds may be tensors), so a backend can compile the whole chain.
    Args:
        model_fn: `model_fn(x_t, t, *context)` -> the network's output; t is int32 (N,).
        x, x0: the current sample and the previous step's x0_hat (zeros before the first step).
        chain: the plan's `ChainTensors`.
    """
    timesteps, coefficients, noises, known, mask, known_noises = chain
    batch = ops.shape(x)[0]

    def body(i, state):
        x_t, x0_prev = state
        step = StepCoefficients.from_row(ops.take(coefficients, i, axis=0))
        t = ops.broadcast_to(ops.take(timesteps, i, axis=0), (batch,))
        output = ops.cast(model_fn(x_t, t, *context), "float32")
        noise = None if noises is None else ops.take(noises, i - start, axis=0)
        x_next, x0_hat = denoise_step(x_t, output, step, noise, prediction, clip_denoised, x0_prev)
        if known is not None:
            known_noise = ops.take(known_noises, i - start, axis=0)
            noised = (
                step.sqrt_alphas_cumprod_prev * known
                + step.sqrt_one_minus_alphas_cumprod_prev * known_noise
            )
            x_next = mask * noised + (1.0 - mask) * x_next
        return x_next, x0_hat

    return ops.fori_loop(start, stop, body, (x, x0))


def draw_noises(plan, start, stop, length, shape, seed_generator, only_stochastic=True):
    """z for steps start..stop - 1, zero-padded to `length`; one `keras.random.normal` per step in
    order, skipping (zero) the steps with sigma = 0 when `only_stochastic`."""
    zeros = ops.zeros(shape)
    noises = [
        keras.random.normal(shape, seed=seed_generator)
        if plan.sigma[i] > 0 or not only_stochastic
        else zeros
        for i in range(start, stop)
    ]
    noises += [zeros] * (length - len(noises))
    return ops.stack(noises)


def _bucket(n):
    return 1 << (int(n) - 1).bit_length()


def run_plan(
    run,
    x,
    plan,
    seed_generator=None,
    callback=None,
    callback_steps=None,
    known=None,
    mask=None,
    max_noise_bytes=2**28,
    max_steps_per_call=None,
):
    """Runs a whole plan from x (= x at plan.timesteps[0]) through `run(x, x0, start, stop, chain)`,
    a (compiled or plain) `reverse_steps` with model_fn, context and options bound; returns
    (x, x0_hat).

    The chain runs in as few calls as possible: one, unless `callback(step, t, x, x0_hat)` must see
    the steps in `callback_steps` (default: all), or the per-step noise for the whole chain would
    take more than `max_noise_bytes` (then chunks of equal length, so one compilation serves all),
    or `max_steps_per_call` is given (1: one call per step, the classic loop).
    """
    steps = len(plan)
    # Zero rows pad the arrays to a power of two, so nearby step counts share one compilation.
    padded = _bucket(steps)
    timesteps = ops.convert_to_tensor(np.pad(plan.timesteps.astype(np.int32), (0, padded - steps)))
    table = np.pad(plan.coefficients(), ((0, padded - steps), (0, 0)))
    coefficients = ops.convert_to_tensor(table)
    if callback is None:
        callback_steps = []
    elif callback_steps is None:
        callback_steps = range(steps)
    stops = {i + 1 for i in callback_steps if 0 <= i < steps} | {steps}
    shape = tuple(ops.shape(x))
    stochastic = plan.stochastic or known is not None
    if stochastic:
        per_step = int(np.prod(shape)) * 4 * (1 + (known is not None) + plan.stochastic)
        chunk = max(1, max_noise_bytes // per_step)
        stops |= set(range(chunk, steps, chunk))
    if max_steps_per_call:
        stops |= set(range(max_steps_per_call, steps, max_steps_per_call))
    stops = sorted(stops)
    length = _bucket(max(b - a for a, b in zip([0] + stops[:-1], stops)))
    x0 = ops.zeros_like(x)
    start = 0
    for stop in stops:
        noises = (
            draw_noises(plan, start, stop, length, shape, seed_generator)
            if plan.stochastic
            else None
        )
        known_noises = None
        if known is not None:
            known_noises = draw_noises(
                plan, start, stop, length, shape, seed_generator, only_stochastic=False
            )
        chain = ChainTensors(timesteps, coefficients, noises, known, mask, known_noises)
        x, x0 = run(x, x0, start, stop, chain)
        if callback is not None and stop - 1 in callback_steps:
            callback(stop - 1, int(plan.timesteps[stop - 1]), x, x0)
        start = stop
    return x, x0
