"""keras_ddpm.convert.tf_checkpoint: the DDPM authors' TensorFlow checkpoints (variable scope
"model", EMA copies), written by the test from a diffusers model and read on every backend."""

import os

import numpy as np
import pytest
from convert_testing import inputs
from convert_testing import keras_output
from convert_testing import reference_output
from convert_testing import small32  # noqa: F401 (a fixture)
from convert_testing import small_unet  # noqa: F401 (a fixture)
from convert_testing import write_tf_checkpoint

from keras_ddpm.convert import convert
from keras_ddpm.convert import detect_format
from keras_ddpm.convert import read
from keras_ddpm.convert import tf_checkpoint


@pytest.fixture(scope="module")
def prefix(small_unet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusion_cifar10_model")
    return write_tf_checkpoint(str(folder / "model.ckpt-790000"), small_unet, ema_scale=0.5)


def test_a_tf_checkpoint_matches_diffusers_and_samples_with_its_ema(small_unet, prefix):
    model = convert(prefix)
    x, t = inputs(32)
    expected = reference_output(small_unet, x, t)
    assert np.abs(keras_output(model, x, t, ema=False) - expected).max() <= 1e-4  # trained
    assert np.abs(keras_output(model, x, t) - expected).max() > 1e-2  # the halved EMA copy
    unet, diffusion = model.config.unet, model.config.diffusion
    assert (unet.image_size, unet.channel_multipliers, unet.attention_resolutions) == (
        32,
        (1, 2, 2, 2),
        (16,),
    )
    assert (diffusion.variance, diffusion.clip_denoised) == ("fixed_large", True)
    assert "TensorFlow checkpoint, with EMA" in model.config.source


@pytest.mark.once
def test_the_ema_copies_and_the_adam_slots(prefix):
    checkpoint = tf_checkpoint.read(prefix)
    assert checkpoint.weights.keys() == checkpoint.ema_weights.keys()
    for key, value in checkpoint.weights.items():
        np.testing.assert_allclose(checkpoint.ema_weights[key], 0.5 * value, rtol=1e-6)
    assert not any("Adam" in key for key in checkpoint.weights)


@pytest.mark.once
def test_the_prefix_its_files_and_its_folder_all_name_the_checkpoint(prefix):
    folder = os.path.dirname(prefix)
    for source in (prefix, prefix + ".index", prefix + ".data-00000-of-00001", folder):
        assert detect_format(source) == "tf_checkpoint"
        assert tf_checkpoint.find_prefix(source) == prefix


@pytest.mark.once
def test_a_truncated_data_file_is_one_sentence(prefix, tmp_path):
    copy = str(tmp_path / "model.ckpt-1")
    for suffix in (".index", ".data-00000-of-00001"):
        with open(prefix + suffix, "rb") as f:
            data = f.read()
        with open(copy + suffix, "wb") as f:
            f.write(data[: len(data) // 2] if suffix.startswith(".data") else data)
    with pytest.raises(ValueError, match=r"model\.ckpt-1 is not a complete TensorFlow checkpoint"):
        read(copy)
