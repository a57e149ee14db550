"""`TrainConfig.short_run_warning`: `train` warns when --steps is shorter than the learning-rate
warm-up or a few EMA horizons (closed forms; no backend)."""

import pytest

from keras_ddpm.config import PRESETS
from keras_ddpm.config import SHORT_RUN_EMA_HORIZONS
from keras_ddpm.config import get_preset

pytestmark = pytest.mark.once  # dataclass arithmetic


def train(preset="mnist", **overrides):
    return get_preset(preset).replace(**overrides).train


def test_the_ema_horizon_is_one_over_one_minus_the_last_decay():
    assert train(ema_decay=0.999).ema_horizon() == pytest.approx(1000)
    # With warm-up p the last decay is min(d, 1 - N^-p): the horizon N^p until it reaches 1/(1-d).
    assert train(ema_decay=0.995, ema_warmup_power=0.75).ema_horizon(81) == pytest.approx(27)
    assert train(ema_decay=0.995, ema_warmup_power=0.75).ema_horizon(10**6) == pytest.approx(200)
    assert train(ema_decay=0.0).ema_horizon() == 1


def test_every_preset_trains_long_enough_for_its_warmup_and_ema():
    for preset in PRESETS.values():
        assert preset.train.short_run_warning() is None, preset.name


def test_a_run_shorter_than_three_ema_horizons_is_warned_about():
    # mnist: EMA 0.999 (a horizon of 1,000 steps), LR warm-up 500 steps. Without EMA warm-up the
    # untrained initial weights keep 0.999^N of the EMA: 5% (e^-3) at N = 3,000.
    assert SHORT_RUN_EMA_HORIZONS == 3
    assert train(train_steps=3000).short_run_warning() is None
    warning = train(train_steps=2999).short_run_warning()
    assert warning == (
        "--steps 2,999 is shorter than 3 EMA horizons (3 x 1,000 steps at --ema-decay 0.999), so "
        "samples from the EMA weights will look like noise; pass a lower --ema-decay or "
        "--ema-warmup-power 0.75, or sample the trained weights with `sample --no-ema`."
    )
    # Warmed up (p = 0.75): the horizon is N^0.75, so N < 3 N^0.75 below N = 3^4 = 81.
    warmed = {"warmup_steps": 0, "ema_decay": 0.995, "ema_warmup_power": 0.75}
    assert train(train_steps=82, **warmed).short_run_warning() is None
    warning = train(train_steps=80, **warmed).short_run_warning()
    assert "at --ema-decay 0.995 and --ema-warmup-power 0.75)" in warning
    assert "pass a lower --ema-warmup-power or --ema-decay" in warning


def test_a_run_shorter_than_the_learning_rate_warmup_is_warned_about():
    assert train(train_steps=500, ema_decay=0.9).short_run_warning() is None
    warning = train(train_steps=499, ema_decay=0.9).short_run_warning()
    assert warning == (
        "--steps 499 is shorter than the learning-rate warm-up (500 steps: the rate never "
        "peaks); lower --warmup-steps."
    )
    both = train(train_steps=200).short_run_warning()
    assert both.startswith(
        "--steps 200 is shorter than the learning-rate warm-up (500 steps: the rate never peaks) "
        "and than 3 EMA horizons"
    )
    assert "; lower --warmup-steps; pass a lower --ema-decay" in both and "\n" not in both
