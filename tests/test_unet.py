import contextlib
import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_ddpm import UNetConfig
from keras_ddpm import build_unet
from keras_ddpm import get_preset
from keras_ddpm.layers import AttentionBlock
from keras_ddpm.layers import Conv2D
from keras_ddpm.layers import Dense
from keras_ddpm.layers import GroupNormalization
from keras_ddpm.layers import ResidualBlock
from keras_ddpm.layers import SinusoidalEmbedding
from keras_ddpm.layers import Upsample

# Parameter counts of the papers' models (DDPM: 35.7M at 32x32 and 114M at 256x256;
# DDIM's CelebA 64x64 model). The exact figures are those of the authors' architecture.
PAPER_PARAMETERS = {"ddpm_cifar10": 35_746_307, "ddim_celeba64": 78_700_803, "ddpm_256": 113_673_219}


@pytest.mark.once
@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_paper_presets_have_the_papers_parameter_counts(name):
    assert build_unet(get_preset(name).unet).count_params() == PAPER_PARAMETERS[name]


@pytest.mark.once
def test_cifar10_layout_follows_ddpm():
    network = build_unet(get_preset("ddpm_cifar10").unet)
    blocks = [layer for layer in network.layers if isinstance(layer, ResidualBlock)]
    attention = [layer for layer in network.layers if isinstance(layer, AttentionBlock)]
    # 4 levels x 2 blocks down, 2 in the middle, 4 levels x 3 blocks up.
    assert len(blocks) == 8 + 2 + 12
    # At 16x16: 2 down, 3 up, plus the middle one at 4x4.
    assert sorted(layer.output.shape[1] for layer in attention) == [4, 16, 16, 16, 16, 16]
    assert network.get_layer("temb_dense1").units == 512
    assert {block.num_groups for block in blocks} == {32}


@pytest.mark.parametrize("num_classes", [0, 3])
def test_tiny_output_shape_and_zero_init(num_classes):
    config = get_preset("tiny").replace(num_classes=num_classes).unet
    network = build_unet(config)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 1)).astype("float32")
    inputs = [x, np.array([0, 99], "int32")] + ([np.array([0, 3], "int32")] if num_classes else [])
    output = ops.convert_to_numpy(network(inputs))
    assert output.shape == (2, 16, 16, 1)
    # The output convolution starts at zero, as in the paper's code.
    np.testing.assert_array_equal(output, 0.0)
    if num_classes:
        assert network.get_layer("class_embedding").input_dim == num_classes + 1  # + the null label
    else:
        assert len(network.inputs) == 2


def test_sinusoidal_embedding_matches_ddpm():
    t = np.array([0, 1, 37, 999], "int32")
    embedding = ops.convert_to_numpy(SinusoidalEmbedding(8)(t))
    frequencies = np.exp(-math.log(10000) / 3 * np.arange(4))
    angles = t[:, None] * frequencies[None, :]
    np.testing.assert_allclose(embedding, np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=1e-4)


@pytest.mark.once
def test_config_validation():
    with pytest.raises(ValueError, match="num_groups"):
        UNetConfig(base_channels=48, num_groups=32)
    with pytest.raises(ValueError, match="image_size"):
        UNetConfig(image_size=20)
    with pytest.raises(ValueError, match="image_channels"):
        UNetConfig(image_channels=4)
    with pytest.raises(ValueError, match="Unknown preset"):
        get_preset("ddpm_cifar100")
    with pytest.raises(ValueError, match="Unknown configuration field"):
        get_preset("tiny").replace(channels=3)


@pytest.mark.once
def test_presets_carry_the_papers_training_settings():
    cifar = get_preset("ddpm_cifar10")
    assert (cifar.train.learning_rate, cifar.train.warmup_steps, cifar.train.batch_size) == (2e-4, 5000, 128)
    assert (cifar.train.ema_decay, cifar.train.grad_clip, cifar.unet.dropout) == (0.9999, 1.0, 0.1)
    assert (cifar.diffusion.timesteps, cifar.diffusion.beta_start, cifar.diffusion.beta_end) == (1000, 1e-4, 0.02)
    big = get_preset("ddpm_256")
    assert (big.train.learning_rate, big.train.batch_size, big.unet.dropout) == (2e-5, 64, 0.0)
    celeba = get_preset("ddim_celeba64")
    assert celeba.unet.channel_multipliers == (1, 2, 2, 2, 4) and celeba.unet.image_size == 64
    assert celeba.unet.attention_resolutions == (16,) and celeba.unet.dropout == 0.1


def test_attention_block_takes_unknown_height_and_width():
    """TensorFlow traces a training step with the pipeline's shape; where height and width are
    unknown (None) the block must still compute, and give the static-shape result (issue 18)."""
    block = AttentionBlock(num_groups=4)
    block.build((None, None, None, 8))
    for weight in block.weights:
        weight.assign(np.random.default_rng(1).standard_normal(weight.shape).astype("float32") * 0.1 + ("gamma" in weight.path))
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 8)).astype("float32")
    expected = ops.convert_to_numpy(block(ops.convert_to_tensor(x)))
    assert np.abs(expected - x).max() > 1e-3  # the attention branch is not a no-op
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(block, input_signature=[tf.TensorSpec((None, None, None, 8), tf.float32)])
        np.testing.assert_allclose(traced(x).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("make", [
    lambda cls: cls(6, 3, padding="same"),
    lambda cls: cls(6, 1),
    lambda cls: cls(6, 3, strides=2, padding="same"),
    lambda cls: cls(6, 2, padding="same"),
    lambda cls: cls(6, 3, strides=2),
], ids=["3x3", "1x1", "strided", "even-kernel", "strided-valid"])
def test_our_conv_equals_keras_conv_and_follows_weight_changes(make):
    # On PyTorch our Conv2D convolves NHWC data in place and, outside autograd, keeps the kernel
    # in torch's layout until the variable changes; results must match Keras' layer throughout.
    # 8x8 and 7x7: a stride-2 "same" convolution pads them differently (TensorFlow's rule).
    x = np.random.default_rng(0).standard_normal((2, 8, 7, 4)).astype("float32")
    ours, reference = make(Conv2D), make(keras.layers.Conv2D)
    ours.build(x.shape)
    reference.build(x.shape)
    for step in range(2):
        for weight, ref_weight in zip(ours.weights, reference.weights):
            value = np.random.default_rng(step).standard_normal(weight.shape).astype("float32")
            weight.assign(value)
            ref_weight.assign(value)
        expected = ops.convert_to_numpy(reference(x))
        np.testing.assert_allclose(ops.convert_to_numpy(ours(x)), expected, atol=1e-5)
        with no_grad():  # the cached-kernel path on PyTorch
            np.testing.assert_allclose(ops.convert_to_numpy(ours(x)), expected, atol=1e-5)


def test_conv_kernel_on_torch_is_kept_in_torch_layout_with_keras_values():
    # PyTorch: the kernel has Keras' shape and initial values but torch's channels_last memory
    # order, so the convolution views it without a copy and its gradient comes back in that order.
    x = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype("float32")
    ours, reference = (cls(6, 3, padding="same", kernel_initializer=keras.initializers.GlorotUniform(seed=1))
                       for cls in (Conv2D, keras.layers.Conv2D))
    ours.build(x.shape)
    reference.build(x.shape)
    assert ours.kernel.shape == reference.kernel.shape == (3, 3, 4, 6)
    np.testing.assert_array_equal(ops.convert_to_numpy(ours.kernel), ops.convert_to_numpy(reference.kernel))
    if keras.backend.backend() != "torch":
        return
    import torch

    kernel = ours.kernel.value
    assert kernel.stride() == (12, 4, 1, 36)  # memory order (out, kh, kw, in)
    assert torch.permute(kernel, (3, 2, 0, 1)).is_contiguous(memory_format=torch.channels_last)
    ours(torch.from_numpy(x)).square().sum().backward()
    reference(torch.from_numpy(x)).square().sum().backward()
    assert kernel.grad.stride() == kernel.stride()
    np.testing.assert_allclose(kernel.grad.numpy(), reference.kernel.value.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3, 5)], ids=["2d", "nhwc"])
def test_our_dense_equals_keras_dense_with_gradients(shape):
    # On PyTorch our Dense is one addmm (bias inside the product); values and gradients must be Keras'.
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    ours, reference = (cls(6, bias_initializer="glorot_uniform", kernel_initializer=keras.initializers.GlorotUniform(seed=2))
                       for cls in (Dense, keras.layers.Dense))
    for layer in (ours, reference):
        layer.build(x.shape)
    ours.bias.assign(reference.bias)
    np.testing.assert_allclose(ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(reference(x)), rtol=1e-5, atol=1e-6)
    assert ours(x).shape == (*shape[:-1], 6)
    if keras.backend.backend() != "torch":
        return
    import torch

    for layer in (ours, reference):
        layer(torch.from_numpy(x)).square().sum().backward()
    for weight, ref_weight in zip(ours.weights, reference.weights):
        np.testing.assert_allclose(weight.value.grad.numpy(), ref_weight.value.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_our_upsample_is_keras_nearest_upsampling_then_the_conv():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4)).astype("float32")
    block = Upsample(6)
    block.build(x.shape)
    for weight in block.weights:
        weight.assign(np.random.default_rng(1).standard_normal(weight.shape).astype("float32"))
    expected = block.conv(keras.layers.UpSampling2D(2)(x))
    np.testing.assert_allclose(ops.convert_to_numpy(block(x)), ops.convert_to_numpy(expected), atol=1e-5)
    assert block(x).shape == (2, 6, 10, 6)


def no_grad():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def test_our_group_norm_equals_keras_group_norm():
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 8)).astype("float32") * 3 + 1
    ours, reference = GroupNormalization(4, epsilon=1e-6), keras.layers.GroupNormalization(4, epsilon=1e-6)
    ours.build(x.shape)
    reference.build(x.shape)
    for weight, ref_weight in zip(ours.weights, reference.weights):
        value = np.random.default_rng(1).standard_normal(weight.shape).astype("float32")
        weight.assign(value)
        ref_weight.assign(value)
    np.testing.assert_allclose(ops.convert_to_numpy(ours(x)), ops.convert_to_numpy(reference(x)), atol=1e-5)
