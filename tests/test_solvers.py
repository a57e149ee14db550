"""Samplers on data whose score is known in closed form, and DPM-Solver++(2M)'s coefficients.

Data x_0 ~ N(mu, s^2) per pixel makes x_t ~ N(sqrt(a) mu, a s^2 + 1 - a), so the optimal
epsilon-predictor is eps*(x_t, t) = (x_t - sqrt(a) mu) sqrt(1 - a) / (a s^2 + 1 - a), and the
probability-flow ODE maps x_T to exactly mu + s (x_T - sqrt(a_T) mu) / sqrt(a_T s^2 + 1 - a_T).
"""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from keras_ddpm import samplers
from keras_ddpm.schedules import NoiseSchedule
from keras_ddpm.schedules import linear_betas

SCHEDULE = NoiseSchedule(linear_betas(1000))
MU, S = 0.3, 0.5


def analytic_run():
    alphas_cumprod = ops.convert_to_tensor(SCHEDULE.alphas_cumprod.astype("float32"))

    def optimal_eps(x_t, t):
        a = ops.take(alphas_cumprod, t)[:, None, None, None]
        return (x_t - ops.sqrt(a) * MU) * ops.sqrt(1.0 - a) / (a * S**2 + 1.0 - a)

    return functools.partial(
        samplers.reverse_steps, optimal_eps, prediction="epsilon", clip_denoised=False
    )


def sample(plan, x_T, seed=1):
    x, _ = samplers.run_plan(
        analytic_run(), ops.convert_to_tensor(x_T), plan, keras.random.SeedGenerator(seed)
    )
    return ops.convert_to_numpy(x).astype(np.float64)


@pytest.fixture(scope="module")
def x_T():
    return np.random.default_rng(0).standard_normal((4000, 2, 2, 1)).astype("float32")


def ode_solution(x_T):
    a_T = SCHEDULE.alphas_cumprod[-1]
    return MU + S * (x_T - np.sqrt(a_T) * MU) / np.sqrt(a_T * S**2 + 1.0 - a_T)


@pytest.mark.parametrize(
    "sampler, options, var_tol",
    [
        ("ddpm", {"steps": 1000}, 0.04),
        # 100 ancestral steps with beta-tilde variances under-disperse by ~11% (measured): a known
        # property of few-step fixed-small sampling, not of this code.
        ("ddim", {"steps": 100, "eta": 1.0}, 0.16),
        ("ddim", {"steps": 100}, 0.07),
        ("dpm_solver", {"steps": 20}, 0.04),
    ],
)
def test_samples_match_the_gaussian_data(sampler, options, var_tol, x_T):
    x = sample(samplers.make_plan(SCHEDULE, sampler, **options), x_T)
    # 16,000 samples: the standard error of the mean is 0.004.
    assert abs(x.mean() - MU) < 0.015
    assert abs(x.var() / S**2 - 1.0) < var_tol


def test_dpm_solver_20_beats_ddim_50_on_the_ode(x_T):
    exact = ode_solution(x_T)

    def rms(plan):
        return np.sqrt(np.mean((sample(plan, x_T) - exact) ** 2))

    ddim_50 = rms(samplers.ddim_plan(SCHEDULE, 50))
    ddim_100 = rms(samplers.ddim_plan(SCHEDULE, 100))
    dpm_20 = rms(samplers.dpm_solver_plan(SCHEDULE, 20))
    dpm_10 = rms(samplers.dpm_solver_plan(SCHEDULE, 10))
    assert dpm_20 < ddim_100 < ddim_50 and dpm_10 < ddim_50
    assert dpm_20 < 0.01 and ddim_50 > 0.02  # measured: 0.0073 and 0.028
    # Second order: halving the step size divides the error by about four (first order: two).
    assert dpm_10 / dpm_20 > 1.8
    assert 1.7 < ddim_50 / ddim_100 < 2.3


@pytest.mark.once
def test_dpm_solver_coefficients_follow_algorithm_2():
    plan = samplers.dpm_solver_plan(SCHEDULE, 8)
    a = SCHEDULE.alphas_cumprod
    t = plan.timesteps
    assert t[0] == 999 and t[-1] == 0 and len(t) == 8 and not plan.stochastic
    lam = lambda s: 0.5 * np.log(a[s] / (1 - a[s]))  # noqa: E731
    # Timesteps evenly spaced in log-SNR, up to rounding to integers.
    assert np.ptp(np.diff([lam(s) for s in t])) < 0.3
    for i in range(1, 7):
        h, h_prev = lam(t[i + 1]) - lam(t[i]), lam(t[i]) - lam(t[i - 1])
        r = h_prev / h
        alpha_next, sigma_next = np.sqrt(a[t[i + 1]]), np.sqrt(1 - a[t[i + 1]])
        # x_next = (sigma_next / sigma) x + alpha_next (1 - e^-h) ((1 + 1/2r) x0 - 1/2r x0_prev), x
        # = alpha x0 + sigma eps.
        phi = 1 - np.exp(-h)
        np.testing.assert_allclose(plan.coef_eps[i], sigma_next, rtol=1e-12)
        np.testing.assert_allclose(
            plan.coef_x0[i], alpha_next * (np.exp(-h) + phi * (1 + 1 / (2 * r))), rtol=1e-10
        )
        np.testing.assert_allclose(plan.coef_x0_prev[i], -alpha_next * phi / (2 * r), rtol=1e-10)
    # First and last steps are first order (DDIM eta = 0): no history, and onto sigma = 0.
    ddim = samplers.ddim_plan(SCHEDULE, 2, skip="linspace")
    assert plan.coef_x0_prev[0] == plan.coef_x0_prev[-1] == 0
    assert plan.coef_x0[-1] == 1 and plan.coef_eps[-1] == 0
    first = samplers.dpm_solver_plan(SCHEDULE, 2)
    np.testing.assert_allclose(first.coefficients(), ddim.coefficients(), rtol=1e-6)


@pytest.mark.once
def test_timestep_sequences():
    # From `start`: the spacing of T' = start + 1 timesteps.
    np.testing.assert_array_equal(samplers.ddim_timesteps(100, 4, start=31), [24, 16, 8, 0])
    np.testing.assert_array_equal(
        samplers.ddim_timesteps(100, 4, "linspace", start=30), [30, 20, 10, 0]
    )
    np.testing.assert_array_equal(
        samplers.ddim_timesteps(100, 4, "trailing", start=31), [31, 23, 15, 7]
    )
    # capped at start + 1
    np.testing.assert_array_equal(samplers.ddim_timesteps(100, 50, start=3), [3, 2, 1, 0])
    np.testing.assert_array_equal(
        samplers.ddim_timesteps(100, 4, "quadratic", start=36), [36, 16, 4, 0]
    )
    # DPM-Solver "linspace": diffusers' layout, steps + 1 points without t = 0.
    np.testing.assert_array_equal(
        samplers.dpm_solver_plan(SCHEDULE, 4, "linspace").timesteps, [999, 749, 500, 250]
    )
    logsnr = samplers.logsnr_timesteps(SCHEDULE, 20)
    assert (
        logsnr[0] == 999 and logsnr[-1] == 0 and len(logsnr) == 20 and np.all(np.diff(logsnr) < 0)
    )
    ddpm = samplers.ddpm_plan(SCHEDULE, start=10)
    np.testing.assert_array_equal(ddpm.timesteps, np.arange(10, -1, -1))
    with pytest.raises(ValueError, match="start"):
        samplers.ddim_timesteps(100, 4, start=100)


@pytest.mark.once
def test_ddim_inversion_plan_mirrors_ddim():
    inversion, ddim = samplers.ddim_inversion_plan(SCHEDULE, 5), samplers.ddim_plan(SCHEDULE, 5)
    np.testing.assert_array_equal(inversion.timesteps, ddim.timesteps[::-1][:-1])
    np.testing.assert_allclose(
        inversion.alphas_cumprod_prev, SCHEDULE.alphas_cumprod[ddim.timesteps[::-1][1:]]
    )
    # On the analytic model, inverting the exact ODE solution gives back x_T (up to discretisation).
    x_T = np.random.default_rng(1).standard_normal((500, 2, 2, 1)).astype("float32")
    x_0 = sample(samplers.ddim_plan(SCHEDULE, 200), x_T)
    back = sample(samplers.ddim_inversion_plan(SCHEDULE, 200), x_0.astype("float32"))
    assert np.sqrt(np.mean((back - x_T) ** 2)) < 0.05


def test_run_plan_is_the_same_in_one_call_or_step_by_step(x_T):
    plan = samplers.ddim_plan(SCHEDULE, 10, eta=0.5)
    seen = []
    whole = sample(plan, x_T[:8])
    x, _ = samplers.run_plan(
        analytic_run(),
        ops.convert_to_tensor(x_T[:8]),
        plan,
        keras.random.SeedGenerator(1),
        callback=lambda i, t, x, x0: seen.append((i, t)),
        max_steps_per_call=1,
    )
    np.testing.assert_allclose(ops.convert_to_numpy(x), whole, rtol=1e-5, atol=1e-5)
    assert seen == [(i, int(t)) for i, t in enumerate(plan.timesteps)]
