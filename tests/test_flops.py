import dataclasses

import keras
import numpy as np
import pytest

from keras_ddpm import DiffusionModel
from keras_ddpm.config import UNetConfig
from keras_ddpm.flops import forward_flops
from keras_ddpm.flops import unet_forward_flops
from keras_ddpm.unet import build_unet


@pytest.mark.once
def test_conv_and_dense_counts_match_the_closed_forms():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 2 * 8*8 * 3*3 * 3*4
    h = keras.layers.Conv2D(6, 3, strides=2, padding="same")(h)  # 2 * 4*4 * 3*3 * 4*6
    outputs = keras.layers.Dense(5)(h)  # 2 * 4*4 * 6*5
    model = keras.Model(inputs, outputs)
    expected = 2 * 64 * 9 * 12 + 2 * 16 * 9 * 24 + 2 * 16 * 30
    assert forward_flops(model, np.zeros((3, 8, 8, 3), "float32")) == expected
    # The wrappers are gone afterwards.
    assert all("call" not in vars(layer) for layer in model._flatten_layers())


@pytest.mark.once
def test_unet_count_adds_attention_matmuls_to_the_layer_counts():
    config = UNetConfig(
        base_channels=16,
        channel_multipliers=(1, 2),
        attention_resolutions=(8,),
        num_groups=4,
        image_size=16,
    )
    without = dataclasses.replace(config, attention_resolutions=())
    # Attention at 8x8 (32 channels) adds 2 blocks going down and 3 going up (the middle one is in
    # both), each four 1x1 projections, 4 * 2*64*32*32, and two 64x64x32 products, 2 * 2*64*64*32.
    per_block = 4 * 2 * 64 * 32 * 32 + 2 * 2 * 64 * 64 * 32
    assert (
        unet_forward_flops(build_unet(config))
        == unet_forward_flops(build_unet(without)) + 5 * per_block
    )


@pytest.mark.once
def test_ddpm_cifar10_count():
    # 12.44 GFLOPs an image (diffusers' UNet2DModel of this architecture: 12.11 by PyTorch's
    # FlopCounterMode, which on a CPU does not count the fused attention: 5 blocks at 16x16,
    # 4 * 256^2 * 256 each, plus the middle one at 4x4).
    flops = unet_forward_flops(DiffusionModel.from_preset("ddpm_cifar10").network)
    attention = 5 * 4 * 256**2 * 256 + 4 * 16**2 * 256
    assert flops - attention == 12_107_907_072


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's own FLOP counter")
def test_matches_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    config = UNetConfig(
        base_channels=16,
        channel_multipliers=(1, 2),
        attention_resolutions=(),
        num_groups=4,
        image_size=16,
    )
    network = build_unet(config)
    inputs = [np.zeros((2, 16, 16, 3), "float32"), np.zeros((2,), "int32")]
    with FlopCounterMode(display=False) as counter:
        network(inputs)
    # PyTorch counts the convolutions and dense layers exactly as we do; on a CPU it misses the
    # middle attention block's two 64x64x32 products (the fused kernel has no FLOP formula).
    assert unet_forward_flops(network) == counter.get_total_flops() // 2 + 2 * 2 * 64 * 64 * 32


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's own FLOP counter")
def test_matches_tensorflow_profiler():
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer
    from tensorflow.python.profiler import option_builder

    # TensorFlow's graph profiler counts convolutions and matrix products at 2 FLOPs a
    # multiply-add, as we do; without biases the model has nothing else it would count.
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False)(h)
    outputs = keras.layers.Dense(5, use_bias=False)(h)
    model = keras.Model(inputs, outputs)

    @tf.function(autograph=False)
    def forward(images):
        return model(images, training=False)

    graph = forward.get_concrete_function(tf.TensorSpec((1, 8, 8, 3), tf.float32)).graph
    float_operations = option_builder.ProfileOptionBuilder.float_operation()
    options = option_builder.ProfileOptionBuilder(float_operations).with_empty_output().build()
    profiled = model_analyzer.profile(graph=graph, options=options).total_float_ops
    assert forward_flops(model, np.zeros((1, 8, 8, 3), "float32")) == profiled == 21_696
