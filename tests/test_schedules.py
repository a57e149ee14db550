import math

import numpy as np
import pytest

from keras_ddpm import DiffusionConfig
from keras_ddpm import NoiseSchedule
from keras_ddpm.schedules import cosine_betas
from keras_ddpm.schedules import linear_betas
from keras_ddpm.schedules import min_snr_weights

pytestmark = pytest.mark.once  # NumPy float64 math


def test_linear_schedule_matches_ddpm():
    schedule = NoiseSchedule.from_config(DiffusionConfig())
    assert schedule.betas.dtype == np.float64
    assert schedule.timesteps == 1000
    assert schedule.betas[0] == pytest.approx(1e-4, abs=0)
    assert schedule.betas[-1] == pytest.approx(0.02, abs=0)
    np.testing.assert_allclose(np.diff(schedule.betas), (0.02 - 1e-4) / 999, rtol=1e-9)
    # alpha-bar_t as an explicit product, for a few t.
    for t in (0, 1, 10, 500, 999):
        expected = math.prod(1.0 - (1e-4 + (0.02 - 1e-4) * s / 999) for s in range(t + 1))
        assert schedule.alphas_cumprod[t] == pytest.approx(expected, rel=1e-12)
    # The well-known end point of DDPM's schedule: x_T is almost pure noise.
    assert schedule.alphas_cumprod[-1] == pytest.approx(4.0358e-5, rel=1e-3)


def test_cosine_schedule_follows_closed_form():
    T, s = 1000, 0.008
    schedule = NoiseSchedule(cosine_betas(T))

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    clipped = schedule.betas >= 0.999
    assert clipped.sum() <= 1 and (not clipped.any() or clipped[-1])
    for t in (0, 1, 100, 500, 900, 990):
        assert schedule.alphas_cumprod[t] == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert schedule.betas.max() <= 0.999


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) from the joint Gaussian, independently of the schedule's formulas."""
    schedule = NoiseSchedule(linear_betas(1000))
    for t in (1, 5, 300, 999):
        a_prev, a_t, alpha = (
            schedule.alphas_cumprod[t - 1],
            schedule.alphas_cumprod[t],
            1 - schedule.betas[t],
        )
        # x_{t-1} = sqrt(a_prev) x0 + sqrt(1-a_prev) e1 ; x_t = sqrt(alpha) x_{t-1} + sqrt(beta) e2
        cov = math.sqrt(alpha) * (1 - a_prev)  # Cov(x_{t-1}, x_t | x0)
        var_t = 1 - a_t
        gain = cov / var_t
        # mean = sqrt(a_prev) x0 + gain (x_t - sqrt(a_t) x0) = c1 x0 + c2 x_t
        assert schedule.posterior_mean_coef1[t] == pytest.approx(
            math.sqrt(a_prev) - gain * math.sqrt(a_t), rel=1e-9
        )
        assert schedule.posterior_mean_coef2[t] == pytest.approx(gain, rel=1e-9)
        assert schedule.posterior_variance[t] == pytest.approx((1 - a_prev) - cov * gain, rel=1e-7)
    assert schedule.posterior_variance[0] == 0.0
    assert schedule.alphas_cumprod_prev[0] == 1.0


def test_schedule_is_immutable_and_validated():
    schedule = NoiseSchedule(linear_betas(10))
    with pytest.raises(ValueError):
        schedule.betas[0] = 0.5
    with pytest.raises(ValueError):
        schedule.alphas_cumprod[0] = 0.5
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="schedule"):
        DiffusionConfig(schedule="sigmoid")


@pytest.mark.parametrize("prediction", ["epsilon", "x0", "v"])
def test_min_snr_weights_make_every_target_a_clipped_x0_loss(prediction):
    # Hang et al. 2023: with x_t = sqrt(a) x_0 + sqrt(1 - a) eps, an error d in x_0 is an error
    # -sqrt(a / (1 - a)) d in eps and -d / sqrt(1 - a) in v, so weight * (target error)^2 must be
    # min(SNR, gamma) * d^2 at every t.
    schedule = NoiseSchedule(linear_betas(1000))
    a = schedule.alphas_cumprod
    snr = a / (1 - a)
    weights = min_snr_weights(a, 5.0, prediction)
    scale = {"epsilon": np.sqrt(snr), "x0": np.ones_like(a), "v": 1 / np.sqrt(1 - a)}[prediction]
    np.testing.assert_allclose(weights * scale**2, np.minimum(snr, 5.0), rtol=1e-12)
    assert snr[0] > 5.0 > snr[-1]  # both sides of the clip are exercised
    if prediction == "epsilon":
        t = np.argmax(snr < 5.0)
        np.testing.assert_allclose(weights[t:], 1.0)  # noisy steps: DDPM's L_simple
        np.testing.assert_allclose(weights[0], 5.0 * (1 - a[0]) / a[0], rtol=1e-12)
    with pytest.raises(ValueError, match="prediction"):
        min_snr_weights(a, 5.0, "score")
    for wrong in (-1.0, math.inf, True, "5"):
        with pytest.raises(ValueError, match="snr_gamma"):
            DiffusionConfig(snr_gamma=wrong)
