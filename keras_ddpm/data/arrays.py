"""The embedded datasets without TensorFlow: a `keras.utils.PyDataset` of NumPy batches.

`data.make_dataset` returns this instead of a tf.data pipeline when TensorFlow is not
installed (a JAX or PyTorch machine, e.g. a GPU box with no TensorFlow) and the dataset is
an embedded one (`mnist_5k`). It applies the same preprocessing as the tf.data pipeline:
28x28 digits are zero-padded to 32x32 (other sizes resized with PIL's antialiased bilinear
filter), channels converted, pixels scaled to [-1, 1], optional per-image flips; the data
is reshuffled every pass.
"""

import keras
import numpy as np
from PIL import Image


def prepare_arrays(images, image_size, image_channels):
    """uint8 (N, h, w, c) -> uint8 (N, size, size, image_channels), as `transforms` does."""
    n, height, width, channels = images.shape
    if (height, width) == (28, 28) and image_size == 32:
        images = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    elif (height, width) != (image_size, image_size):
        mode = "L" if channels == 1 else "RGB"
        size = (image_size, image_size)
        pictures = (
            Image.fromarray(image[..., 0] if channels == 1 else image, mode) for image in images
        )
        resized = [np.asarray(picture.resize(size, Image.BILINEAR)) for picture in pictures]
        images = np.stack(resized).reshape(n, image_size, image_size, channels)
    if channels == image_channels:
        return images
    if channels == 1 and image_channels == 3:
        return np.repeat(images, 3, axis=-1)
    if channels == 3 and image_channels == 1:
        weights = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, like PIL's "L"
        luma = images.astype(np.float32) @ weights
        return np.round(luma)[..., None].astype(np.uint8)
    raise ValueError(f"Cannot convert {channels}-channel images to {image_channels} channels.")


class ArrayBatches(keras.utils.PyDataset):
    """float32 batches in [-1, 1] (with int32 labels when `with_labels`) from in-memory arrays.

    With `repeat` the dataset is infinite (`num_batches` is None), reshuffled on every pass.
    """

    def __init__(self, images, labels, image_size, image_channels, batch_size, options):
        """`options`: the `DatasetOptions` of `make_dataset` (labels, order, flips, remainder)."""
        super().__init__()
        seed, drop_remainder = options.seed, options.drop_remainder
        self.images = prepare_arrays(images, image_size, image_channels)
        self.labels = np.asarray(labels, np.int32)
        if drop_remainder and len(self.images) < batch_size:
            raise ValueError(
                f"The dataset has {len(self.images)} images, fewer than one batch of {batch_size}."
            )
        self.batch_size = batch_size
        self.with_labels = options.with_labels
        self.shuffle = options.shuffle
        self.repeat = options.repeat
        self.horizontal_flip = options.horizontal_flip
        self.seed = seed if seed is not None else int(np.random.default_rng().integers(2**31))
        full, rest = divmod(len(self.images), batch_size)
        self.batches_per_pass = full + (0 if drop_remainder or not rest else 1)
        self._orders = {}

    @property
    def num_batches(self):
        return None if self.repeat else self.batches_per_pass

    def _order(self, epoch):
        if epoch not in self._orders:
            count = len(self.images)
            rng = np.random.default_rng([self.seed, epoch])
            self._orders = {epoch: rng.permutation(count) if self.shuffle else np.arange(count)}
        return self._orders[epoch]

    def __getitem__(self, index):
        epoch, position = divmod(index, self.batches_per_pass)
        rows = self._order(epoch)[position * self.batch_size : (position + 1) * self.batch_size]
        images = self.images[rows]
        if self.horizontal_flip:
            flip = np.random.default_rng([self.seed, index, 1]).random(len(rows)) < 0.5
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        images = images.astype(np.float32) / 127.5 - 1.0
        return (images, self.labels[rows]) if self.with_labels else images
