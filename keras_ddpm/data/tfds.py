"""TensorFlow Datasets (tfds) image datasets as a dataset source.

Any registered tfds dataset with an image feature works ("celeb_a", "cifar10", "mnist",
"svhn_cropped", "oxford_flowers102", "name/config"...). The encoded images are read with
`SkipDecoding` and decoded by the pipeline, so JPEGs are decoded only inside their crop.
Failures to download or prepare (offline, Google Drive's quota for celeb_a) become one
`ValueError` sentence saying what to do.
"""

import contextlib
import dataclasses
import os

CELEBA_FILES = (
    "img_align_celeba.zip",
    "list_eval_partition.txt",
    "list_attr_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "identity_CelebA.txt",
)
CELEBA_HOMEPAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


@dataclasses.dataclass(frozen=True)
class TfdsImageDataset:
    """What the pipeline needs to know about a tfds dataset."""

    builder: object  # tfds.core.DatasetBuilder
    image_key: str
    label_key: str  # "" when the dataset has no class label
    channels: int  # channels to decode to: the feature's (1 or 3)
    num_classes: int

    def num_examples(self, split):
        """Examples in `split` (slices such as "train[:10%]" allowed), or None if unknown."""
        try:
            return int(self.builder.info.splits[split].num_examples) or None
        except (KeyError, ValueError, TypeError):
            return None


# Image datasets of tfds' catalog that "did you mean" offers (`pipeline.check_dataset_name`)
# without importing tfds; any other registered name works too.
IMAGE_DATASETS = (
    "celeb_a",
    "celeb_a_hq",
    "cifar10",
    "cifar100",
    "cifar10_1",
    "cifar10_corrupted",
    "mnist",
    "fashion_mnist",
    "emnist",
    "kmnist",
    "binarized_mnist",
    "mnist_corrupted",
    "svhn_cropped",
    "lsun",
    "oxford_flowers102",
    "oxford_iiit_pet",
    "stl10",
    "imagenet2012",
    "imagenet_resized",
    "downsampled_imagenet",
    "imagenette",
    "stanford_dogs",
    "food101",
    "caltech_birds2011",
    "caltech101",
    "cats_vs_dogs",
    "tf_flowers",
    "cars196",
    "dtd",
    "eurosat",
    "horses_or_humans",
    "rock_paper_scissors",
    "beans",
    "omniglot",
    "cmaterdb",
    "lfw",
    "shapes3d",
    "dsprites",
    "smallnorb",
    "places365_small",
)


def close_names(name, known):
    """The names in `known` that `name` may be a typo of, closest first (difflib)."""
    import difflib

    return difflib.get_close_matches(name, known, n=3, cutoff=0.75)


def registered_names():
    """Every dataset tfds registers (imports its catalog: about a second)."""
    import tensorflow_datasets as tfds

    return tuple(tfds.list_builders(with_community_datasets=False))


def did_you_mean(names):
    return f"; did you mean {' or '.join(names)}?" if names else ""


def _unknown_name_error(name):
    from keras_ddpm.data.pipeline import EMBEDDED_DATASETS

    close = close_names(name.split("/")[0], EMBEDDED_DATASETS + registered_names())
    return ValueError(
        f"Unknown dataset {name!r}: it is not mnist_5k, not a registered tfds dataset "
        "(see https://www.tensorflow.org/datasets/catalog) and no folder exists at that path"
        + (did_you_mean(close) or ".")
    )


def tfds_dataset(name, data_dir=None):
    """Finds the builder and its image and label features; downloads nothing."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown_name_error(name) from None
    features = builder.info.features
    images = [key for key, feature in features.items() if isinstance(feature, tfds.features.Image)]
    if not images:
        raise ValueError(
            f"The tfds dataset {name!r} has no image feature; choose an image dataset."
        )
    image_key = "image" if "image" in images else images[0]
    labels = [
        key for key, feature in features.items() if isinstance(feature, tfds.features.ClassLabel)
    ]
    label_key = "label" if "label" in labels else (labels[0] if labels else "")
    shape = features[image_key].shape
    channels = shape[-1] if shape and shape[-1] in (1, 3) else 3
    num_classes = features[label_key].num_classes if label_key else 0
    return TfdsImageDataset(builder, image_key, label_key, channels, num_classes)


def _download_error(name, builder, error):
    message = str(error).strip()
    reason = f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"
    data_dir = str(builder.data_dir_root)
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    if builder.name == "celeb_a":
        return ValueError(
            f"Could not download celeb_a ({reason}); Google Drive often refuses it, so download "
            f"{', '.join(CELEBA_FILES)} from {CELEBA_HOMEPAGE} into {manual_dir} and run again "
            f"(with --data-dir {data_dir}), or pass the extracted img_align_celeba folder as "
            "--dataset PATH --crop celeba."
        )
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        instructions = " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
        return ValueError(
            f"The tfds dataset {name} needs a manual download ({reason}): put its files in "
            f"{manual_dir} and run again; tfds says: {instructions}"
        )
    return ValueError(
        f"Could not download and prepare the tfds dataset {name} into {data_dir} ({reason}); "
        "run once with internet access, or copy a prepared copy there (--data-dir DIR)."
    )


# Hosts whose names resolve on any machine that can download: tfds' own bucket and Google Drive
# (celeb_a and others). Offline, tfds retries every request ten times with exponential back-off
# (about four minutes and fifty warnings) before it fails.
PROBE_HOSTS = ("storage.googleapis.com", "drive.google.com")
PROBE_SECONDS = 5.0


def offline_reason(hosts=PROBE_HOSTS, timeout=PROBE_SECONDS):
    """Why this machine cannot download (none of `hosts` resolves within `timeout` seconds),
    or None when one of them does."""
    import concurrent.futures
    import socket

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(hosts))
    futures = [pool.submit(socket.getaddrinfo, host, 443) for host in hosts]
    done, _ = concurrent.futures.wait(futures, timeout=timeout)
    pool.shutdown(wait=False)  # a resolver still stuck is left behind, not waited for
    if any(future.exception() is None for future in done):
        return None
    errors = [future.exception() for future in done]
    detail = f": {errors[0]}" if len(done) == len(futures) else f" within {timeout:g} s"
    return f"no internet access (could not resolve {' or '.join(hosts)}{detail})"


@contextlib.contextmanager
def _retries(count):
    """tfds' HTTP retries per request (`downloader.MAX_RETRIES`) set to `count` for a while."""
    from tensorflow_datasets.core.download import downloader

    saved = downloader.MAX_RETRIES
    downloader.MAX_RETRIES = count
    try:
        yield
    finally:
        downloader.MAX_RETRIES = saved


def prepare(dataset, name):
    """`download_and_prepare`, a no-op when the dataset is already prepared. Offline
    (`offline_reason`) tfds gets no retries, so a download fails at once, while files already
    downloaded or placed in the manual folder are still used."""
    offline = None if dataset.builder.is_prepared() else offline_reason()
    try:
        with _retries(0) if offline else contextlib.nullcontext():
            dataset.builder.download_and_prepare()
    except Exception as error:  # network, quota, checksum, missing manual files: many kinds
        raise _download_error(
            name, dataset.builder, ConnectionError(offline) if offline else error
        ) from error


def read_encoded(dataset, split, shuffle, seed):
    """A tf.data.Dataset of (encoded image bytes, int32 label) for `split`."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    read_config = tfds.ReadConfig(shuffle_seed=seed)
    records = dataset.builder.as_dataset(
        split=split,
        shuffle_files=shuffle,
        decoders={dataset.image_key: tfds.decode.SkipDecoding()},
        read_config=read_config,
    )
    image_key, label_key = dataset.image_key, dataset.label_key

    def select(example):
        label = tf.cast(example[label_key], tf.int32) if label_key else tf.constant(0, tf.int32)
        return example[image_key], label

    return records.map(select, num_parallel_calls=tf.data.AUTOTUNE)
