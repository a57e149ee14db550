"""What the framework modules share: unpacking a batch and switching an optimizer's clipping off."""

import contextlib

import keras


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
