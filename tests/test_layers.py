"""keras_ddpm.layers: each layer through `layer_testing.check_layer` (shape, dtype, config and
`.keras` round trips), against Keras' own layer where ours stands in for one, and the math."""

import contextlib
import math

import keras
import numpy as np
import pytest
from keras import ops
from layer_testing import check_layer

from keras_ddpm.layers import GROUP_NORM_EPSILON
from keras_ddpm.layers import AttentionBlock
from keras_ddpm.layers import Conv2D
from keras_ddpm.layers import Dense
from keras_ddpm.layers import Downsample
from keras_ddpm.layers import GroupNormalization
from keras_ddpm.layers import ResidualBlock
from keras_ddpm.layers import SinusoidalEmbedding
from keras_ddpm.layers import Upsample


def no_grad():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


CONVS = {
    "3x3": ({"filters": 6, "kernel_size": 3, "padding": "same"}, (2, 8, 7, 6)),
    "1x1": ({"filters": 6, "kernel_size": 1}, (2, 8, 7, 6)),
    "strided": ({"filters": 6, "kernel_size": 3, "strides": 2, "padding": "same"}, (2, 4, 4, 6)),
    "even-kernel": ({"filters": 6, "kernel_size": 2, "padding": "same"}, (2, 8, 7, 6)),
    "strided-valid": ({"filters": 6, "kernel_size": 3, "strides": 2}, (2, 3, 3, 6)),
}


@pytest.mark.parametrize("name", list(CONVS))
def test_our_conv_equals_keras_conv_and_follows_weight_changes(name, tmp_path):
    # On PyTorch our Conv2D convolves NHWC data in place and, outside autograd, keeps the kernel
    # in torch's layout until the variable changes; results must match Keras' layer throughout.
    # 8x8 and 7x7: a stride-2 "same" convolution pads them differently (TensorFlow's rule).
    kwargs, output_shape = CONVS[name]
    checked = check_layer(
        Conv2D,
        kwargs,
        (2, 8, 7, 4),
        output_shape,
        tmp_path=tmp_path,
        reference=lambda: keras.layers.Conv2D(**kwargs),
        check_gradients=True,
        grad_rtol=1e-4,
    )
    ours, reference, x = checked.layer, checked.reference, checked.inputs
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
    ours, reference = (
        cls(6, 3, padding="same", kernel_initializer=keras.initializers.GlorotUniform(seed=1))
        for cls in (Conv2D, keras.layers.Conv2D)
    )
    ours.build(x.shape)
    reference.build(x.shape)
    assert ours.kernel.shape == reference.kernel.shape == (3, 3, 4, 6)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(ours.kernel), ops.convert_to_numpy(reference.kernel)
    )
    if keras.backend.backend() != "torch":
        return
    import torch

    kernel = ours.kernel.value
    assert kernel.stride() == (12, 4, 1, 36)  # memory order (out, kh, kw, in)
    assert torch.permute(kernel, (3, 2, 0, 1)).is_contiguous(memory_format=torch.channels_last)
    ours(torch.from_numpy(x)).square().sum().backward()
    reference(torch.from_numpy(x)).square().sum().backward()
    assert kernel.grad.stride() == kernel.stride()
    np.testing.assert_allclose(
        kernel.grad.numpy(), reference.kernel.value.grad.numpy(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3, 5)], ids=["2d", "nhwc"])
def test_our_dense_equals_keras_dense_with_gradients(shape, tmp_path):
    # On PyTorch our Dense is one addmm (bias inside the product); values and gradients must be
    # Keras'.
    def kwargs():
        return {
            "units": 6,
            "bias_initializer": "glorot_uniform",
            "kernel_initializer": keras.initializers.GlorotUniform(seed=2),
        }

    # The same seeded initial kernel as Keras' layer.
    ours, reference = Dense(**kwargs()), keras.layers.Dense(**kwargs())
    for layer in (ours, reference):
        layer.build(shape)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(ours.kernel), ops.convert_to_numpy(reference.kernel)
    )
    check_layer(
        Dense,
        kwargs(),
        shape,
        (*shape[:-1], 6),
        tmp_path=tmp_path,
        reference=lambda: keras.layers.Dense(**kwargs()),
        check_gradients=True,
        rtol=1e-5,
        atol=1e-6,
    )


def test_our_group_norm_equals_keras_group_norm(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 8)).astype("float32") * 3 + 1
    check_layer(
        GroupNormalization,
        {"groups": 4, "epsilon": 1e-6},
        input_data=x,
        expected_output_shape=x.shape,
        tmp_path=tmp_path,
        reference=lambda: keras.layers.GroupNormalization(4, epsilon=1e-6),
        check_gradients=True,
        weight_scale=1.0,
        grad_rtol=1e-4,
    )


def test_our_upsample_is_keras_nearest_upsampling_then_the_conv(tmp_path):
    checked = check_layer(
        Upsample,
        {"channels": 6},
        (2, 3, 5, 4),
        (2, 6, 10, 6),
        tmp_path=tmp_path,
        reference=lambda: keras.Sequential(
            [keras.layers.UpSampling2D(2), keras.layers.Conv2D(6, 3, padding="same")]
        ),
        check_gradients=True,
        weight_scale=1.0,
        grad_rtol=1e-4,
    )
    block, x = checked.layer, checked.inputs
    expected = block.conv(keras.layers.UpSampling2D(2)(x))
    np.testing.assert_allclose(
        ops.convert_to_numpy(block(x)), ops.convert_to_numpy(expected), atol=1e-5
    )
    assert block(x).shape == (2, 6, 10, 6)


def test_downsample_is_keras_strided_conv(tmp_path):
    # 7 wide: "same" with stride 2 pads the odd column after, as TensorFlow does.
    check_layer(
        Downsample,
        {"channels": 6},
        (2, 8, 7, 4),
        (2, 4, 4, 6),
        tmp_path=tmp_path,
        reference=lambda: keras.layers.Conv2D(6, 3, strides=2, padding="same"),
        check_gradients=True,
        grad_rtol=1e-4,
    )


def test_sinusoidal_embedding_matches_ddpm(tmp_path):
    t = np.array([0, 1, 37, 999], "int32")
    checked = check_layer(
        SinusoidalEmbedding,
        {"dim": 8},
        input_data=t,
        expected_output_shape=(4, 8),
        tmp_path=tmp_path,
    )
    frequencies = np.exp(-math.log(10000) / 3 * np.arange(4))
    angles = t[:, None] * frequencies[None, :]
    np.testing.assert_allclose(
        checked.outputs, np.concatenate([np.sin(angles), np.cos(angles)], 1), atol=1e-4
    )


@pytest.mark.parametrize("dim", [2, 7])
def test_sinusoidal_embedding_rejects_odd_or_small_dims(dim):
    with pytest.raises(ValueError, match=f"Received: dim={dim}"):
        SinusoidalEmbedding(dim)


@pytest.mark.parametrize("in_channels", [8, 4], ids=["same-channels", "nin-shortcut"])
def test_residual_block_round_trips_and_starts_as_its_shortcut(in_channels, tmp_path):
    init_kwargs = {"channels": 8, "num_groups": 4, "dropout": 0.1}
    shapes = [(2, 6, 5, in_channels), (2, 16)]
    checked = check_layer(ResidualBlock, init_kwargs, shapes, (2, 6, 5, 8), tmp_path=tmp_path)
    x, temb = checked.inputs
    assert (checked.layer.shortcut is None) == (in_channels == 8)
    assert np.abs(checked.outputs[..., :in_channels] - x[..., :in_channels]).max() > 1e-3
    # Fresh, the last convolution is zero (the paper's code): the block is its shortcut.
    fresh = ResidualBlock(**init_kwargs)
    output = ops.convert_to_numpy(fresh([x, temb]))
    shortcut = x if fresh.shortcut is None else ops.convert_to_numpy(fresh.shortcut(x))
    np.testing.assert_allclose(output, shortcut, atol=1e-6)


def test_attention_block_round_trips_and_is_softmax_attention(tmp_path):
    checked = check_layer(
        AttentionBlock, {"num_groups": 4}, (2, 3, 5, 8), (2, 3, 5, 8), tmp_path=tmp_path
    )
    block, x = checked.layer, checked.inputs
    # Closed form: x + proj_out(softmax(q k^T / sqrt(C)) v) with q, k, v = dense(GN(x)).
    weights = {w.path.split("/", 1)[1]: ops.convert_to_numpy(w) for w in block.weights}
    groups = x.reshape(2, 3, 5, 4, 2)
    mean = groups.mean(axis=(1, 2, 4), keepdims=True)
    var = groups.var(axis=(1, 2, 4), keepdims=True)
    h = ((groups - mean) / np.sqrt(var + GROUP_NORM_EPSILON)).reshape(2, 15, 8)
    h = h * weights["norm/gamma"] + weights["norm/beta"]
    q, k, v = (h @ weights[f"{n}/kernel"] + weights[f"{n}/bias"] for n in "qkv")
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(8)
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    out = (attention @ v) @ weights["proj_out/kernel"] + weights["proj_out/bias"]
    np.testing.assert_allclose(checked.outputs, x + out.reshape(x.shape), atol=1e-4)
    # Fresh, the output projection is zero: the block is the identity.
    np.testing.assert_array_equal(ops.convert_to_numpy(AttentionBlock(num_groups=4)(x)), x)


def test_attention_block_takes_unknown_height_and_width(tmp_path):
    """TensorFlow traces a training step with the pipeline's shape; where height and width are
    unknown (None) the block must still compute, and give the static-shape result (issue 18)."""
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 8)).astype("float32")
    checked = check_layer(
        AttentionBlock,
        {"num_groups": 4},
        input_data=x,
        expected_output_shape=x.shape,
        tmp_path=tmp_path,
    )
    block = AttentionBlock(num_groups=4)
    block.build((None, None, None, 8))
    block.set_weights(checked.layer.get_weights())
    expected = ops.convert_to_numpy(block(ops.convert_to_tensor(x)))
    np.testing.assert_array_equal(expected, checked.outputs)
    assert np.abs(expected - x).max() > 1e-3  # the attention branch is not a no-op
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(
            block, input_signature=[tf.TensorSpec((None, None, None, 8), tf.float32)]
        )
        np.testing.assert_allclose(traced(x).numpy(), expected, atol=1e-5)
