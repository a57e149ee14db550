"""keras_ddpm.convert.diffusers: UNet2DModel folders against diffusers itself, on each backend."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from convert_testing import cifar10  # noqa: F401 (a fixture)
from convert_testing import import_diffusers
from convert_testing import inputs
from convert_testing import keras_output
from convert_testing import reference_output
from convert_testing import six_levels  # noqa: F401 (a fixture)
from convert_testing import small32  # noqa: F401 (a fixture)
from safetensors.torch import load_file
from safetensors.torch import save_file

from keras_ddpm.config import UNetConfig
from keras_ddpm.convert import convert
from keras_ddpm.convert import diffusers as reader


@pytest.fixture(scope="module")
def cifar10_model(cifar10):
    return convert(cifar10[0])


def test_the_cifar10_model_matches_diffusers(cifar10, cifar10_model):
    _, unet = cifar10
    model = cifar10_model
    assert model.network.count_params() == sum(p.numel() for p in unet.parameters()) == 35_746_307
    assert model.config.unet == UNetConfig(
        image_size=32, channel_multipliers=(1, 2, 2, 2), attention_resolutions=(16,), dropout=0.0
    )
    diffusion = model.config.diffusion
    assert (diffusion.timesteps, diffusion.schedule, diffusion.beta_start, diffusion.beta_end) == (
        1000,
        "linear",
        1e-4,
        0.02,
    )
    assert (diffusion.prediction, diffusion.variance, diffusion.clip_denoised) == (
        "epsilon",
        "fixed_large",
        True,
    )
    assert "diffusers UNet2DModel" in model.config.source
    x, t = inputs(32)
    expected = reference_output(unet, x, t)
    assert np.abs(expected).max() > 0.5  # a network that does something
    assert np.abs(keras_output(model, x, t) - expected).max() <= 1e-4


def test_the_six_level_256_layout_matches_diffusers(six_levels):
    folder, unet = six_levels
    model = convert(folder)
    unet_config = model.config.unet
    assert (unet_config.image_size, unet_config.channel_multipliers) == (256, (1, 1, 2, 2, 4, 4))
    assert (unet_config.attention_resolutions, unet_config.num_groups) == ((16,), 32)
    assert model.config.diffusion.variance == "fixed_small"
    assert model.network.count_params() == sum(p.numel() for p in unet.parameters())
    x, t = inputs(256, batch=2)
    expected = reference_output(unet, x, t)
    assert np.abs(expected).max() > 0.5
    assert np.abs(keras_output(model, x, t) - expected).max() <= 1e-4


@pytest.mark.once  # the sampling loop's backends are checked in tests/test_diffusion_model.py
def test_ddim_sampling_matches_diffusers_ddim_pipeline(small32):
    """DDIM, eta 0, 10 steps from the same x_T: diffusers' DDIMPipeline (its scheduler with
    DDIM's leading spacing, clipping as the model's config, the final alpha 1) and `generate`."""
    diffusers = import_diffusers()
    folder, unet = small32
    model = convert(folder)
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=True,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )
    pipeline = diffusers.DDIMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    shape = (2, 3, 32, 32)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # the pipeline's draw
    with torch.no_grad():
        theirs = pipeline(
            batch_size=2,
            generator=torch.Generator().manual_seed(0),
            eta=0.0,
            num_inference_steps=10,
            use_clipped_model_output=True,  # eps recomputed from the clipped x0, as ours
            output_type="np",
        ).images
    theirs = np.round(theirs * 255).astype(np.int16)
    ours = model.generate(
        noise=x_T.permute(0, 2, 3, 1).numpy(), sampler="ddim", steps=10, eta=0.0, skip="uniform"
    ).astype(np.int16)
    assert theirs.std() > 20  # images, not a constant
    difference = np.abs(ours - theirs)
    assert np.mean(difference <= 1) >= 0.99, np.percentile(difference, [50, 99, 100])


def _copy(folder, destination):
    shutil.copytree(folder, destination)
    return str(destination)


@pytest.mark.once
def test_old_attention_names_load_as_the_new_ones(six_levels, tmp_path):
    """diffusers' pre-0.15 files name attention query/key/value/proj_attn."""
    folder, _ = six_levels
    old = _copy(folder, tmp_path / "old")
    weights_path = os.path.join(old, "diffusion_pytorch_model.safetensors")
    renames = {
        ".to_q.": ".query.",
        ".to_k.": ".key.",
        ".to_v.": ".value.",
        ".to_out.0.": ".proj_attn.",
    }
    tensors = {}
    for key, value in load_file(weights_path).items():
        for new, previous in renames.items():
            key = key.replace(new, previous)
        tensors[key] = value
    assert any(".query." in key for key in tensors)
    save_file(tensors, weights_path)
    new_weights = reader.read(folder).weights
    old_weights = reader.read(old).weights
    assert new_weights.keys() == old_weights.keys()
    assert all(np.array_equal(new_weights[k], old_weights[k]) for k in new_weights)


@pytest.mark.once
def test_a_bin_file_loads_where_there_is_no_safetensors(six_levels, tmp_path):
    folder, unet = six_levels
    bin_folder = _copy(folder, tmp_path / "bin")
    os.remove(os.path.join(bin_folder, "diffusion_pytorch_model.safetensors"))
    torch.save(unet.state_dict(), os.path.join(bin_folder, "diffusion_pytorch_model.bin"))
    from_bin = reader.read(bin_folder)
    from_safetensors = reader.read(folder)
    assert "diffusion_pytorch_model.bin" in from_bin.source
    assert all(np.array_equal(from_bin.weights[k], v) for k, v in from_safetensors.weights.items())


@pytest.mark.once
def test_the_scheduler_config_is_found_beside_one_folder_up_or_in_a_pipeline(six_levels, tmp_path):
    folder, _ = six_levels
    pipeline = tmp_path / "pipeline"
    _copy(folder, pipeline / "unet")
    os.makedirs(pipeline / "scheduler")
    os.replace(
        pipeline / "unet" / "scheduler_config.json",
        pipeline / "scheduler" / "scheduler_config.json",
    )
    (pipeline / "model_index.json").write_text("{}")
    assert reader.find_folders(str(pipeline)) == (
        str(pipeline / "unet"),
        str(pipeline / "scheduler" / "scheduler_config.json"),
    )
    up = reader.find_folders(str(pipeline / "unet"))
    assert up == (str(pipeline / "unet"), str(pipeline / "scheduler" / "scheduler_config.json"))
    os.remove(pipeline / "scheduler" / "scheduler_config.json")
    with pytest.raises(
        ValueError,
        match=r"has no scheduler_config\.json beside config\.json or one folder up; download",
    ):
        reader.read(str(pipeline / "unet"))


@pytest.mark.once
@pytest.mark.parametrize(
    "scheduler, expected",
    [
        ({}, ("linear", "epsilon", "fixed_small", True, 1000)),
        (
            {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"},
            ("cosine", "v", "fixed_small", True, 1000),
        ),
        (
            {"variance_type": "fixed_large_log", "clip_sample": False, "num_train_timesteps": 4000},
            ("linear", "epsilon", "fixed_large", False, 4000),
        ),
        (
            {"_class_name": "DDIMScheduler", "prediction_type": "sample"},
            ("linear", "x0", "fixed_small", True, 1000),
        ),
    ],
)
def test_scheduler_configs_map_to_diffusion_configs(scheduler, expected):
    config = reader.diffusion_config(scheduler, "a model")
    got = (
        config.schedule,
        config.prediction,
        config.variance,
        config.clip_denoised,
        config.timesteps,
    )
    assert got == expected


@pytest.mark.once
@pytest.mark.parametrize(
    "scheduler, named",
    [
        ({"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear'"),
        ({"variance_type": "learned_range"}, "variance_type='learned_range'"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
        ({"thresholding": True}, "dynamic thresholding"),
    ],
)
def test_scheduler_settings_keras_ddpm_lacks_are_refused_by_name(scheduler, named):
    with pytest.raises(ValueError, match=f"asks for {named}, which keras_ddpm lacks"):
        reader.diffusion_config(scheduler, "a model")


@pytest.mark.once
@pytest.mark.parametrize(
    "change, named",
    [
        ({"attention_head_dim": 8}, "multi-head attention"),
        ({"flip_sin_to_cos": True, "freq_shift": 0}, "freq_shift=0 with flip_sin_to_cos=True"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        (
            {
                "down_block_types": [
                    "DownBlock2D",
                    "CrossAttnDownBlock2D",
                    "DownBlock2D",
                    "DownBlock2D",
                ]
            },
            "block types",
        ),
        ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
    ],
)
def test_unet_configs_keras_ddpm_cannot_express_are_refused_by_name(cifar10, change, named):
    with open(os.path.join(cifar10[0], "config.json")) as f:
        config = {**reader.UNET_DEFAULTS, **json.load(f), **change}
    with pytest.raises(ValueError, match=f"cannot express: {named}"):
        reader.unet_config(config, "a model")


@pytest.mark.once
def test_symmetric_downsample_padding_and_epsilon_come_from_the_config(cifar10):
    with open(os.path.join(cifar10[0], "config.json")) as f:
        config = {**reader.UNET_DEFAULTS, **json.load(f), "downsample_padding": 1, "norm_eps": 1e-5}
    unet = reader.unet_config(config, "a model")
    assert (unet.downsample_padding, unet.norm_epsilon) == ("symmetric", 1e-5)
