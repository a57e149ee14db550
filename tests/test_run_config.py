"""keras_ddpm.run_config: `python cli.py train`'s options as a frozen dataclass, its limits,
and the options a resumed run takes from its run directory's config.json."""

import dataclasses
import json

import pytest

from keras_ddpm.cli import cli
from keras_ddpm.config import get_preset
from keras_ddpm.run_config import RunConfig

pytestmark = pytest.mark.once  # Keras-free configuration


def test_the_train_command_is_built_from_the_config():
    params = {p.name: p for p in cli.commands["train"].params}
    assert list(params) == [f.name for f in dataclasses.fields(RunConfig)]
    defaults = RunConfig()
    for name, param in params.items():
        assert param.default == getattr(defaults, name), name
        choices = RunConfig.limit(name).choices
        assert tuple(getattr(param.type, "choices", ())) == (choices or ()), name
    assert params["lr"].type.min == 0 and params["lr"].type.min_open
    assert (params["verbose"].type.min, params["verbose"].type.max) == (0, 2)


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(lr=0.0), r"lr must be a number > 0\. Received: lr=0\.0"),
        (
            dict(ema_decay=1.0),
            r"ema_decay must be a number >= 0 and < 1\. Received: ema_decay=1\.0",
        ),
        (dict(verbose=3), r"verbose must be an int >= 0 and <= 2\. Received: verbose=3"),
        (dict(crop="square"), r"crop must be one of \('auto', 'center', 'celeba', 'none'\)"),
        (dict(grad_clip=float("inf")), r"grad_clip must be a finite number"),
        (dict(steps=True), r"steps must be an int >= 1\. Received: steps=True"),
        (dict(dataset=None), r"dataset must be a string\. Received: dataset=None"),
    ],
)
def test_values_outside_the_limits_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**values)


def test_whole_numbers_given_for_numbers_become_floats():
    config = RunConfig(lr=1, grad_clip=0)
    assert isinstance(config.lr, float) and config.lr == 1.0 and isinstance(config.grad_clip, float)


def test_preset_config_applies_the_overrides_given():
    assert RunConfig(preset="tiny").preset_config() == get_preset("tiny")
    preset = RunConfig(preset="tiny", steps=7, batch_size=3, lr=0.5, ema_decay=0.5).preset_config()
    assert (preset.train.train_steps, preset.train.batch_size) == (7, 3)
    assert (preset.train.learning_rate, preset.train.ema_decay) == (0.5, 0.5)
    assert preset.unet == get_preset("tiny").unet


def test_a_resumed_run_takes_the_options_it_was_not_given_from_config_json(tmp_path):
    saved = RunConfig(preset="tiny", steps=5, batch_size=4, seed=3, lr=1e-3, out_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"options": saved.options()}))
    assert "resume" not in saved.options()
    resumed = RunConfig(out_dir=str(tmp_path), resume=True, steps=9).with_saved_options()
    assert resumed == dataclasses.replace(saved, resume=True, steps=9)
    # Options named as given win, even at their defaults.
    given = RunConfig(out_dir=str(tmp_path), resume=True, seed=0)
    resumed = given.with_saved_options(explicit={"out_dir", "resume", "seed"})
    assert (resumed.seed, resumed.steps, resumed.preset) == (0, 5, "tiny")
    # Without --resume, config.json is not read.
    fresh = RunConfig(out_dir=str(tmp_path))
    assert fresh.with_saved_options() is fresh


def test_an_invalid_saved_option_is_named(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"options": {"preset": "tiny", "lr": -1, "unknown": 1}}))
    message = rf"^{config} holds an invalid option lr=-1, so the run cannot be resumed; fix or "
    message += r"remove it\.$"
    with pytest.raises(ValueError, match=message):
        RunConfig(out_dir=str(tmp_path), resume=True).with_saved_options()
