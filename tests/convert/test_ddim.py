"""keras_ddpm.convert.ddim: the DDIM code's PyTorch UNet (pesser's ports of the DDPM models and
DDIM's ckpt.pth), written from a diffusers model by convert_testing's own renaming and checked
against diffusers' output."""

import keras
import numpy as np
import pytest
import torch
from convert_testing import ddim_state_dict
from convert_testing import inputs
from convert_testing import keras_output
from convert_testing import reference_output
from convert_testing import small32  # noqa: F401 (a fixture)
from convert_testing import small_unet  # noqa: F401 (a fixture)

from keras_ddpm.config import UNetConfig
from keras_ddpm.convert import convert
from keras_ddpm.convert import read


@pytest.fixture(scope="module")
def ddim_run(small_unet, tmp_path_factory):
    """DDIM's ckpt.pth: [model (DataParallel's module. keys), optimizer, epoch, step, ema]; the
    EMA weights are the model's halved, to tell them apart."""
    path = tmp_path_factory.mktemp("ddim") / "ckpt.pth"
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8}]}
    states = [
        ddim_state_dict(small_unet, prefix="module."),
        optimizer,
        12,
        5000,
        ddim_state_dict(small_unet, scale=0.5),
    ]
    torch.save(states, path)
    return str(path)


def test_a_state_dict_matches_diffusers(small_unet, tmp_path):
    path = tmp_path / "model-790000.ckpt"
    torch.save(ddim_state_dict(small_unet), path)
    model = convert(str(path))
    assert model.config.unet == UNetConfig(
        image_size=32,
        base_channels=32,
        channel_multipliers=(1, 2, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(16,),
        dropout=0.1,
    )
    # The DDPM authors' CIFAR-10 settings: fixed-large variance, clipped x_0.
    diffusion = model.config.diffusion
    assert (diffusion.variance, diffusion.clip_denoised) == ("fixed_large", True)
    x, t = inputs(32)
    expected = reference_output(small_unet, x, t)
    assert np.abs(expected).max() > 0.5
    assert np.abs(keras_output(model, x, t) - expected).max() <= 1e-4


def test_ddim_run_checkpoints_sample_with_the_ema_weights(small_unet, ddim_run):
    """The trained network gets the model weights (module. prefix and all), the EMA network,
    which samples, the EMA's."""
    model = convert(ddim_run)
    x, t = inputs(32)
    expected = reference_output(small_unet, x, t)
    assert np.abs(keras_output(model, x, t, ema=False) - expected).max() <= 1e-4
    assert np.abs(keras_output(model, x, t) - expected).max() > 1e-2
    kernel = "down0_block0/conv1/kernel"
    ema_kernel, raw_kernel = (
        next(w for w in network.weights if w.path == kernel)
        for network in (model.ema_network, model.network)
    )
    ema_value, raw_value = (keras.ops.convert_to_numpy(k.value) for k in (ema_kernel, raw_kernel))
    np.testing.assert_allclose(ema_value, 0.5 * raw_value, atol=1e-7)
    assert "EMA weights" in model.config.source
    # DDIM's runs: var_type fixedlarge, no clipping (its generalized_steps).
    diffusion = model.config.diffusion
    assert (diffusion.variance, diffusion.clip_denoised) == ("fixed_large", False)


@pytest.mark.once
def test_the_image_size_follows_the_attention_level_unless_given(small_unet, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save(ddim_state_dict(small_unet), path)
    assert read(str(path)).unet.image_size == 32
    given = read(str(path), image_size=64).unet
    assert (given.image_size, given.attention_resolutions) == (64, (32,))
    assert read(str(path), image_size=64).diffusion.variance == "fixed_small"


@pytest.mark.once
def test_a_weight_the_unet_has_no_place_for_is_refused(small_unet, tmp_path):
    state = ddim_state_dict(small_unet)
    state["logvar"] = torch.zeros(1000)  # DDIM's "bayesian" model type
    path = tmp_path / "bayesian.ckpt"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"holds a weight that a DDPM UNet has no place for \(logvar\)"
    ):
        read(str(path))
