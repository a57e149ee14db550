"""Model configs refuse sizes no one means (keras_ddpm/config.py's MAX_* bounds and the UNet's
parameter count) with one "Received:" sentence, before anything is built; the presets pass."""

import json
import time
import zipfile

import pytest

from keras_ddpm import config
from keras_ddpm import diffusion_model
from keras_ddpm import get_preset
from keras_ddpm import load_model
from keras_ddpm.config import PRESETS
from keras_ddpm.config import DiffusionConfig
from keras_ddpm.config import preset_from_dict

pytestmark = pytest.mark.once  # dataclass validation

# `build_unet(config).count_params()`: the papers' models (test_unet.py builds them) and the
# class-conditional tiny and mnist models (the app tests' and saved_models/mnist.txt's), written
# down because building a network to compare is slow on JAX's first use; these cover 1-2 blocks,
# 3-6 levels, equal and rising multipliers, attention, 1 and 3 channels, the class embedding.
PARAMETERS = {
    "ddpm_cifar10": 35_746_307,
    "ddim_celeba64": 78_700_803,
    "ddpm_256": 113_673_219,
    "tiny+10 classes": 177_553,
    "mnist+10 classes": 1_114_209,
    "mnist_quick+10 classes": 268_017,  # `train --preset mnist_quick --class-cond`'s count
}


def unet(name):
    preset, _, classes = name.partition("+")
    return get_preset(preset).replace(num_classes=int(classes.split()[0]) if classes else 0).unet


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_count_is_the_built_networks_without_building(name):
    assert unet(name).parameter_count() == PARAMETERS[name]


def test_every_preset_passes_the_limits():
    for preset in PRESETS.values():
        # as a .keras file holds it
        assert preset_from_dict(json.loads(json.dumps(preset.to_dict()))) == preset
        assert preset.unet.parameter_count() < config.MAX_PARAMETERS
        assert preset.diffusion.timesteps <= config.MAX_TIMESTEPS


HUGE_UNETS = [  # (overrides of the tiny preset's UNet, the sentence's start, its "Received:" part)
    (dict(image_size=4096), "image_size must be a whole number from 1 to 1,024", "image_size=4096"),
    (dict(image_size=16.0), "image_size must be a whole number", "image_size=16.0"),
    (
        dict(base_channels=65_536),
        "base_channels must be a whole number from 1 to 1,024",
        "base_channels=65536",
    ),
    (
        dict(channel_multipliers=(1,) * 9, image_size=512),
        "channel_multipliers must name 1 to 8 levels",
        "channel_multipliers=(1, 1,",
    ),
    (
        dict(channel_multipliers=(1, 1000)),
        "channel_multipliers must be whole numbers from 1 to 16",
        "channel_multipliers=(1, 1000)",
    ),
    (
        dict(num_res_blocks=10_000),
        "num_res_blocks must be a whole number from 1 to 16",
        "num_res_blocks=10000",
    ),
    (dict(num_groups=0), "num_groups must be a whole number from 1 to 16", "num_groups=0"),
    (
        dict(num_classes=10**9),
        "num_classes must be a whole number from 0 to 100,000",
        "num_classes=1000000000",
    ),
    # Every size within its bound, the whole far over: 1024 channels, multipliers up to 16.
    (
        dict(base_channels=1024, channel_multipliers=(1, 2, 4, 8, 16), num_groups=32),
        "The UNet would have 40,202,652,673 parameters",
        "base_channels=1024, channel_multipliers=(1, 2, 4, 8, 16)",
    ),
]


def tiny_dict(**unet_overrides):
    """The tiny preset as a .keras file or a run's config.json holds it, with UNet fields
    replaced."""
    values = json.loads(json.dumps(get_preset("tiny").to_dict()))
    values["unet"].update(unet_overrides)
    return values


@pytest.fixture
def no_building(monkeypatch):
    """Fails the test if a UNet is built (DiffusionModel builds two)."""

    def build(*args, **kwargs):
        raise AssertionError("a UNet was built")

    monkeypatch.setattr(diffusion_model, "build_unet", build)


@pytest.mark.parametrize("overrides, sentence, received", HUGE_UNETS)
def test_sizes_no_one_means_are_refused_before_building(overrides, sentence, received, no_building):
    with pytest.raises(ValueError) as error:
        # the config is checked in preset_from_dict
        diffusion_model.DiffusionModel(tiny_dict(**overrides))
    message = str(error.value)
    assert (
        message.startswith(sentence) and f"Received: {received}" in message and "\n" not in message
    )
    with pytest.raises(ValueError, match="Received: "):
        get_preset("tiny").replace(**overrides)


def test_timesteps_beyond_the_bound_are_refused():
    with pytest.raises(
        ValueError,
        match=r"timesteps must be a whole number from 2 to 10,000\. Received: timesteps=1000000",
    ):
        DiffusionConfig(timesteps=1_000_000)
    with pytest.raises(ValueError, match="Received: timesteps=1"):
        DiffusionConfig(timesteps=1)


def test_a_small_keras_file_asking_for_gigabytes_is_refused_before_building(tmp_path, no_building):
    # A DiffusionModel's config.json: 40 billion parameters (160 GB) asked for in 2 kB.
    preset = tiny_dict(base_channels=1024, channel_multipliers=[1, 2, 4, 8, 16], num_groups=32)
    model_config = {"name": "diffusion_model", "trainable": True, "config": preset, "seed": None}
    path = tmp_path / "huge.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr(
            "config.json",
            json.dumps(
                {
                    "module": "keras_ddpm.diffusion_model",
                    "class_name": "DiffusionModel",
                    "config": model_config,
                    "registered_name": "keras_ddpm>DiffusionModel",
                }
            ),
        )
        archive.writestr("model.weights.h5", b"")  # never read: the config is refused first
    assert path.stat().st_size < 4096
    start = time.perf_counter()
    with pytest.raises(
        ValueError,
        match=(
            r"The UNet would have 40,202,652,673 parameters, more than the limit of "
            r"1,000,000,000\. Received: "
        ),
    ):
        load_model(str(path))
    assert time.perf_counter() - start < 5
