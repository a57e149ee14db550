"""Counting a network's floating-point operations, for model FLOP utilisation (MFU).

Counts what dominates a UNet's cost and what MFU conventionally counts: the multiply-adds of
convolutions, dense layers and attention's two matrix products (QK^T and AV), two FLOPs each.
Normalisation, activations, additions and the softmax are left out, as PyTorch's
`torch.utils.flop_counter.FlopCounterMode` leaves them out; the convolution and dense counts
equal its count on the torch backend (a test checks this). On a CPU it also misses the fused
attention kernel, so its total for `ddpm_cifar10` (12.11 GFLOPs an image, for diffusers'
UNet2DModel too) is 0.34 GFLOPs below ours (12.44). A training step is about 3x the forward count
(the backward pass computes gradients for both the inputs and the weights of each product).
"""

import math

import numpy as np
from keras import layers

from keras_ddpm.backend import internals
from keras_ddpm.layers import AttentionBlock


def _conv_flops(layer, inputs, outputs):
    kernel_h, kernel_w, in_channels, out_channels = layer.kernel.shape
    spatial = math.prod(outputs.shape[1:-1])
    return 2 * spatial * kernel_h * kernel_w * in_channels * out_channels


def _dense_flops(layer, inputs, outputs):
    in_units, out_units = layer.kernel.shape
    return 2 * math.prod(inputs.shape[1:-1]) * in_units * out_units


def _attention_flops(layer, inputs, outputs):
    # softmax(Q K^T) V over all H*W positions, one head of C channels: two (HW x HW x C) products.
    positions = math.prod(inputs.shape[1:-1])
    return 2 * 2 * positions * positions * inputs.shape[-1]


_COUNTERS = (
    (layers.Conv2D, _conv_flops),
    (layers.Dense, _dense_flops),
    (AttentionBlock, _attention_flops),
)


def forward_flops(model, inputs):
    """FLOPs of one forward pass of `model` for one example of `inputs` (counted from per-example
    shapes).

    Runs the model once, eagerly, with every convolution, dense layer and attention block
    wrapped to record its work; the wrappers are removed afterwards.
    """
    counts = []
    wrapped = []
    for layer in internals.flatten_layers(model):
        counter = next((c for kind, c in _COUNTERS if isinstance(layer, kind)), None)
        if counter is None:
            continue

        def call(*args, _layer=layer, _call=layer.call, _counter=counter, **kwargs):
            outputs = _call(*args, **kwargs)
            counts.append(_counter(_layer, args[0], outputs))
            return outputs

        object.__setattr__(layer, "call", call)
        wrapped.append(layer)
    try:
        model(inputs, training=False)
    finally:
        for layer in wrapped:
            object.__delattr__(layer, "call")
    return sum(counts)


def unet_forward_flops(network, batch_size=1):
    """`forward_flops` of a UNet built by `build_unet`, on zeros of its input shapes."""
    shape = network.inputs[0].shape[1:]
    inputs = [np.zeros((batch_size, *shape), "float32"), np.zeros((batch_size,), "int32")]
    if len(network.inputs) == 3:
        inputs.append(np.zeros((batch_size,), "int32"))
    return forward_flops(network, inputs)
