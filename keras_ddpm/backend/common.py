"""What the framework modules share: unpacking a batch, slicing it into micro-batches, and
switching an optimizer's clipping off."""

import contextlib

import keras
from keras import ops


def unpack(data):
    """(images, labels) of a batch as `fit` hands it to `train_step` (labels may be None)."""
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    return images, labels


@contextlib.contextmanager
def clipping_switched_off(optimizer):
    """The optimizer's own `global_clipnorm` off for one `apply`: the caller clipped already."""
    clip = optimizer.global_clipnorm
    optimizer.global_clipnorm = None
    try:
        yield
    finally:
        optimizer.global_clipnorm = clip


def micro_batch(inputs, count, index):
    """Micro-batch `index` of `count` (a tensor index inside a compiled loop, or an int) of a
    step's inputs (`DiffusionModel.step_inputs`; None entries stay None): examples
    [index * B / count, (index + 1) * B / count) of each."""
    return tuple(
        None if x is None else ops.take(ops.reshape(x, (count, -1, *x.shape[1:])), index, axis=0)
        for x in inputs
    )
