import numpy as np
import pytest
from keras import ops

from keras_ddpm import samplers
from keras_ddpm.schedules import NoiseSchedule
from keras_ddpm.schedules import linear_betas

SCHEDULE = NoiseSchedule(linear_betas(1000))
RNG = np.random.default_rng(0)


def run_step(plan, i, x_t, model_output, noise, prediction="epsilon", clip=False):
    coefficients = samplers.StepCoefficients.from_row(ops.convert_to_tensor(plan.coefficients()[i]))
    x_prev, x0 = samplers.denoise_step(
        ops.convert_to_tensor(x_t),
        ops.convert_to_tensor(model_output),
        coefficients,
        ops.convert_to_tensor(noise),
        prediction,
        clip,
    )
    return ops.convert_to_numpy(x_prev).astype(np.float64), ops.convert_to_numpy(x0).astype(
        np.float64
    )


def test_uniform_timesteps_are_ddims_range():
    # DDIM's code: seq = range(0, T, T // S), visited from the top.
    for steps in (10, 20, 50, 100, 1000):
        expected = np.array(list(range(0, 1000, 1000 // steps)))[::-1]
        np.testing.assert_array_equal(samplers.ddim_timesteps(1000, steps), expected)
    assert samplers.ddim_timesteps(1000, 10)[0] == 900
    # S not dividing T: DDIM's code takes a few more steps (31 for S = 30).
    np.testing.assert_array_equal(samplers.ddim_timesteps(1000, 30), np.arange(990, -1, -33))
    np.testing.assert_array_equal(samplers.ddim_timesteps(1000, 1), [0])


def test_linspace_and_trailing_timesteps_follow_diffusers():
    linspace = samplers.ddim_timesteps(1000, 50, "linspace")
    assert len(linspace) == 50 and linspace[0] == 999 and linspace[-1] == 0
    assert np.all(np.diff(linspace) < 0)
    np.testing.assert_array_equal(
        samplers.ddim_timesteps(1000, 1000, "linspace"), np.arange(999, -1, -1)
    )
    np.testing.assert_array_equal(samplers.ddim_timesteps(1000, 1, "linspace"), [999])
    np.testing.assert_array_equal(samplers.ddim_timesteps(10, 4, "linspace"), [9, 6, 3, 0])
    # diffusers' "trailing": round(arange(T, 0, -T / S)) - 1.
    np.testing.assert_array_equal(
        samplers.ddim_timesteps(1000, 10, "trailing"), np.arange(999, 0, -100)
    )
    np.testing.assert_array_equal(samplers.ddim_timesteps(10, 3, "trailing"), [9, 6, 2])


def test_quadratic_timesteps_follow_ddim():
    timesteps = samplers.ddim_timesteps(1000, 10, "quadratic")
    expected = (np.linspace(0, np.sqrt(800), 10) ** 2).astype(int)[::-1]
    np.testing.assert_array_equal(timesteps, expected)
    assert timesteps[0] == 800 and timesteps[-1] == 0
    # Repeated integers near t = 0 are dropped.
    many = samplers.ddim_timesteps(1000, 100, "quadratic")
    assert len(many) == len(set(many)) < 100


@pytest.mark.parametrize("steps", [0, 1001])
def test_bad_step_counts_are_rejected(steps):
    with pytest.raises(ValueError, match="steps"):
        samplers.ddim_timesteps(1000, steps)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_step_is_algorithm_2(variance):
    plan = samplers.ddpm_plan(SCHEDULE, variance=variance)
    np.testing.assert_array_equal(plan.timesteps, np.arange(999, -1, -1))
    betas, alphas, a = SCHEDULE.betas, SCHEDULE.alphas, SCHEDULE.alphas_cumprod
    for t in (999, 500, 3, 1, 0):
        i = 999 - t
        x_t, eps, z = (RNG.standard_normal((2, 4, 4, 1)).astype("float32") for _ in range(3))
        x_prev, _ = run_step(plan, i, x_t, eps, z)
        # DDPM eq. 11 and Algorithm 2, line 4.
        mean = (x_t - betas[t] / np.sqrt(1 - a[t]) * eps) / np.sqrt(alphas[t])
        if t == 0:
            sigma = 0.0
        elif variance == "fixed_small":
            sigma = np.sqrt(betas[t] * (1 - a[t - 1]) / (1 - a[t]))
        else:
            sigma = np.sqrt(betas[t])
        np.testing.assert_allclose(x_prev, mean + sigma * z, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_is_equation_12(eta):
    plan = samplers.ddim_plan(SCHEDULE, steps=20, eta=eta)
    a = SCHEDULE.alphas_cumprod
    for i in (0, 7, 19):
        t = plan.timesteps[i]
        a_prev = a[plan.timesteps[i + 1]] if i + 1 < len(plan) else 1.0
        x_t, eps, z = (RNG.standard_normal((2, 4, 4, 3)).astype("float32") for _ in range(3))
        x_prev, x0 = run_step(plan, i, x_t, eps, z)
        x0_expected = (x_t - np.sqrt(1 - a[t]) * eps) / np.sqrt(a[t])
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a[t])) * np.sqrt(1 - a[t] / a_prev)
        expected = np.sqrt(a_prev) * x0_expected + np.sqrt(1 - a_prev - sigma**2) * eps + sigma * z
        np.testing.assert_allclose(x0, x0_expected, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(x_prev, expected, rtol=1e-4, atol=1e-3)
    assert plan.stochastic == (eta > 0)
    assert plan.sigma[-1] == 0.0


def test_ddpm_fixed_small_equals_ddim_eta_one():
    ddpm = samplers.ddpm_plan(SCHEDULE, steps=25, skip="uniform")
    ddim = samplers.ddim_plan(SCHEDULE, steps=25, eta=1.0)
    np.testing.assert_array_equal(ddpm.timesteps, ddim.timesteps)
    np.testing.assert_allclose(ddpm.coefficients(), ddim.coefficients(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_targets_convert_to_start_and_noise(prediction):
    x0, eps = RNG.uniform(-1, 1, (3, 4, 4, 1)), RNG.standard_normal((3, 4, 4, 1))
    a = SCHEDULE.alphas_cumprod[400]
    x_t = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    output = {"epsilon": eps, "x0": x0, "v": np.sqrt(a) * eps - np.sqrt(1 - a) * x0}[prediction]
    x0_hat, eps_hat = samplers.predict_start_and_noise(
        output, x_t, np.sqrt(a), np.sqrt(1 - a), prediction
    )
    np.testing.assert_allclose(x0_hat, x0, atol=1e-10)
    np.testing.assert_allclose(eps_hat, eps, atol=1e-10)


def test_clipping_clips_x0_and_recomputes_noise():
    plan = samplers.ddim_plan(SCHEDULE, steps=10)
    x_t = np.full((1, 2, 2, 1), 3.0, "float32")
    eps = np.zeros_like(x_t)  # x0_hat = x_t / sqrt(a) > 1
    x_prev, x0 = run_step(plan, 0, x_t, eps, np.zeros_like(x_t), clip=True)
    np.testing.assert_allclose(x0, 1.0)
    a, a_prev = (
        SCHEDULE.alphas_cumprod[plan.timesteps[0]],
        SCHEDULE.alphas_cumprod[plan.timesteps[1]],
    )
    eps_clipped = (3.0 - np.sqrt(a)) / np.sqrt(1 - a)
    np.testing.assert_allclose(
        x_prev, np.sqrt(a_prev) + np.sqrt(1 - a_prev) * eps_clipped, rtol=1e-5
    )


def test_guidance_formula():
    cond, uncond = np.array([2.0, -1.0]), np.array([1.0, 1.0])
    np.testing.assert_allclose(samplers.guided_output(cond, uncond, 0.0), cond)
    np.testing.assert_allclose(samplers.guided_output(cond, uncond, 3.0), 4 * cond - 3 * uncond)


def test_unknown_sampler_options_are_rejected():
    with pytest.raises(ValueError, match="sampler"):
        samplers.make_plan(SCHEDULE, "euler")
    with pytest.raises(ValueError, match="variance"):
        samplers.make_plan(SCHEDULE, "ddpm", variance="learned")
    with pytest.raises(ValueError, match="skip"):
        samplers.make_plan(SCHEDULE, "ddim", skip="cubic")
