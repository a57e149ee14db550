"""keras_ddpm.data.tfds: TensorFlow Datasets through tfds' mock_data (no download), and its errors
offline."""

import io

import numpy as np
import pytest
from data_testing import batches
from data_testing import to_pixels
from data_testing import window_image
from PIL import Image

from keras_ddpm import data

tfds = pytest.importorskip("tensorflow_datasets")
tf = data.import_tensorflow()


def test_celeba_crop_of_a_jpeg_through_tfds_celeb_a(tmp_path):
    """The real tfds celeb_a path (auto crop, JPEG decoded inside the window) on known content."""
    encoded = io.BytesIO()
    Image.fromarray(window_image()).save(encoded, format="JPEG", quality=100)
    jpeg = encoded.getvalue()

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        assert isinstance(decoders["image"], tfds.decode.SkipDecoding)
        return tf.data.Dataset.from_tensors({"image": tf.constant(jpeg)}).repeat(3)

    stream = dict(shuffle=False, repeat=False)
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        images = batches(data.make_dataset("celeb_a", 128, 3, 2, drop_remainder=False, **stream))
        shifted = batches(data.make_dataset("celeb_a", 128, 3, 3, crop="center", **stream))
    images = to_pixels(np.concatenate(images))
    assert images.shape == (3, 128, 128, 3)
    assert images.min() > 230  # nothing from outside the window...
    assert to_pixels(shifted[0]).min() < 30  # ...which a centre crop would include


@pytest.mark.parametrize(
    "name, size, channels, classes",
    [
        ("celeb_a", 64, 3, 0),
        ("cifar10:test", 32, 3, 10),
        ("mnist", 32, 1, 10),
        ("mnist:train", 16, 3, 10),
    ],
)
def test_tfds_datasets(name, size, channels, classes):
    stream = dict(shuffle=False, repeat=False, drop_remainder=False)
    with tfds.testing.mock_data(num_examples=10):
        assert data.num_classes(name) == classes
        dataset = data.make_dataset(name, size, channels, 4, with_labels=bool(classes), **stream)
        found = batches(dataset)
        training = data.make_dataset(name, size, channels, 4, seed=0, horizontal_flip=True)
        train = batches(training.take(3))
    images = np.concatenate([b[0] for b in found] if classes else found)
    assert images.shape == (10, size, size, channels) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
    assert all(b.shape == (4, size, size, channels) for b in train)
    if classes:
        labels = np.concatenate([b[1] for b in found])
        assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < classes
    if name == "mnist":  # 28x28 padded into 32x32
        assert np.all(images[:, :2] == -1.0) and np.all(images[:, :, -2:] == -1.0)


def test_tfds_errors(monkeypatch):
    with pytest.raises(ValueError, match="Unknown dataset 'cifar1'.* did you mean cifar10"):
        data.make_dataset("cifar1", 32, 3, 4)  # "did you mean" from tfds' registered names
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.num_classes("no_such_dataset:train")
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match="no labels"):
            data.make_dataset("celeb_a", 64, 3, 2, with_labels=True)

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'drive.google.com'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(ValueError, match=r"img_align_celeba\.zip.*downloads/manual") as error:
        data.make_dataset("celeb_a", 64, 3, 4, data_dir="/tmp/tfds_home")
    assert "/tmp/tfds_home/downloads/manual" in str(error.value) and "\n" not in str(error.value)
    message = "Could not download and prepare the tfds dataset cifar10 .*ConnectionError"
    with pytest.raises(ValueError, match=message):
        data.make_dataset("cifar10", 32, 3, 4)


def test_tfds_offline_gets_no_retries_and_fails_within_seconds(monkeypatch, tmp_path):
    """Offline, tfds retried each request with back-off for about 245 s before failing (issue 18).
    Now, when no download host resolves, tfds runs without retries (files already downloaded
    or placed by hand still prepare) and the failure names the cause."""
    import socket
    import time

    from tensorflow_datasets.core.download import downloader

    from keras_ddpm.data import tfds as tfds_source

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    retries = []

    def download_fails(self, *args, **kwargs):
        retries.append(downloader.MAX_RETRIES)
        raise ConnectionError("Max retries exceeded with url: https://www.cs.toronto.edu/")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_fails)
    start = time.perf_counter()
    message = r"cifar10 .*no internet access \(could not resolve storage\.googleapis\.com"
    with pytest.raises(ValueError, match=message):
        data.make_dataset("cifar10", 32, 3, 4, data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10 and retries == [0] and downloader.MAX_RETRIES == 10
    # A resolver that hangs counts as offline after the probe's timeout.
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: time.sleep(3))
    start = time.perf_counter()
    assert "within 0.5 s" in tfds_source.offline_reason(timeout=0.5)
    assert time.perf_counter() - start < 2
