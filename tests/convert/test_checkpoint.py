"""keras_ddpm.convert.checkpoint: the architecture read back from weight names and shapes, and
the one-to-one check before weights are set."""

import dataclasses

import keras
import numpy as np
import pytest

from keras_ddpm.config import UNetConfig
from keras_ddpm.config import get_preset
from keras_ddpm.convert.checkpoint import Checkpoint
from keras_ddpm.convert.checkpoint import infer_unet_config
from keras_ddpm.convert.checkpoint import to_model
from keras_ddpm.unet import build_unet

pytestmark = pytest.mark.once  # names and shapes; a tiny model


def weights_of(config):
    return {w.path: keras.ops.convert_to_numpy(w.value) for w in build_unet(config).weights}


@pytest.mark.parametrize(
    "config",
    [
        get_preset("tiny").unet,
        UNetConfig(
            image_size=64,
            base_channels=16,
            channel_multipliers=(1, 2, 2, 4),
            num_res_blocks=2,
            attention_resolutions=(16,),
            num_groups=8,
        ),
    ],
    ids=["tiny", "four-levels"],
)
def test_the_architecture_is_read_back_from_the_weights(config):
    settings = dict(dropout=config.dropout, num_groups=config.num_groups)
    size = None if config.attention_resolutions == (16,) else config.image_size
    assert infer_unet_config(weights_of(config), "a file", size, **settings) == config


def test_weights_that_do_not_fit_are_refused_with_what_differs():
    config = get_preset("tiny").unet
    diffusion = get_preset("tiny").diffusion
    weights = weights_of(config)
    missing = dict(weights)
    del missing["mid_attn/q/kernel"]
    with pytest.raises(ValueError, match=r"no weights for 1 of its \(mid_attn/q/kernel\)"):
        to_model(Checkpoint(config, diffusion, missing, source="a file"))
    extra = {**weights, "down0_block0/conv_shortcut/kernel": np.zeros((3, 3, 16, 16))}
    with pytest.raises(ValueError, match=r"1 weights with no place in it \(down0_block0/conv_sh"):
        to_model(Checkpoint(config, diffusion, extra, source="a file"))
    wrong = {**weights, "conv_out/bias": np.zeros(3)}
    with pytest.raises(ValueError, match=r"conv_out/bias is \(3,\), the UNet's \(1,\)"):
        to_model(Checkpoint(config, diffusion, wrong, source="a file"))


def test_the_model_records_its_source_and_samples_with_the_chosen_weights():
    config = get_preset("tiny").unet
    weights = {k: np.full_like(v, 0.25) for k, v in weights_of(config).items()}
    ema = {k: np.full_like(v, 0.5) for k, v in weights.items()}
    diffusion = dataclasses.replace(get_preset("tiny").diffusion, variance="fixed_large")
    checkpoint = Checkpoint(config, diffusion, weights, ema, source="a file (a format)")
    for choice, value, words in (("ema", 0.5, "EMA weights"), ("raw", 0.25, "raw weights")):
        model = to_model(checkpoint, choice)
        assert keras.ops.convert_to_numpy(model.ema_network.weights[0].value).flat[0] == value
        assert keras.ops.convert_to_numpy(model.network.weights[0].value).flat[0] == 0.25
        assert model.config.source == f"a file (a format); sampling with {words}"
        assert model.config.diffusion.variance == "fixed_large"
