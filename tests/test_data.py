"""The input pipelines: embedded MNIST, tfds (through mock_data, no download), image folders."""

import io
import os
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

from keras_ddpm import data
from keras_ddpm import data_transforms

tfds = pytest.importorskip("tensorflow_datasets")
tf = data.import_tensorflow()

CELEBA_TOP, CELEBA_LEFT = 57, 25  # DDIM: Crop(x1=57, x2=185, y1=25, y2=153)


def batches(dataset):
    """All batches as numpy: a list of images, or of (images, labels)."""
    return [tuple(np.asarray(t) for t in b) if isinstance(b, tuple) else np.asarray(b) for b in dataset]


def ramp_image(height=218, width=178):
    """R = row index, G = column index, B = 0: every pixel says where it came from."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def window_image(height=218, width=178):
    """White inside DDIM's CelebA window, black outside."""
    image = np.zeros((height, width, 3), np.uint8)
    image[CELEBA_TOP : CELEBA_TOP + 128, CELEBA_LEFT : CELEBA_LEFT + 128] = 255
    return image


def to_pixels(images):
    return (np.asarray(images) + 1.0) * 127.5


# Embedded MNIST.


def test_mnist_5k_splits_sizes_and_labels():
    train_images, train_labels = data.load_mnist_5k("train")
    test_images, test_labels = data.load_mnist_5k("test")
    all_images, all_labels = data.load_mnist_5k("all")
    assert train_images.shape == (4500, 28, 28, 1) and train_images.dtype == np.uint8
    assert test_images.shape == (500, 28, 28, 1)
    assert all_images.shape == (5000, 28, 28, 1)
    assert np.bincount(train_labels).tolist() == [450] * 10
    assert np.bincount(test_labels).tolist() == [50] * 10
    for digit in range(10):  # test = the last 50 of each class
        np.testing.assert_array_equal(test_images[test_labels == digit], all_images[all_labels == digit][-50:])
    assert data.num_classes("mnist_5k") == 10
    with pytest.raises(ValueError, match="splits"):
        data.load_mnist_5k("validation")


def test_mnist_5k_pipeline_pads_28_to_32_and_streams_every_image_once():
    found = batches(data.make_dataset("mnist_5k:test", 32, 1, 64, with_labels=True, shuffle=False, repeat=False, drop_remainder=False))
    images = np.concatenate([b[0] for b in found])
    labels = np.concatenate([b[1] for b in found])
    assert [len(b[0]) for b in found] == [64] * 7 + [52]
    assert images.shape == (500, 32, 32, 1) and images.dtype == np.float32 and labels.dtype == np.int32
    expected_images, expected_labels = data.load_mnist_5k("test")
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(to_pixels(images[:, 2:30, 2:30]), expected_images, atol=1e-4)
    assert np.all(images[:, :2] == -1.0) and np.all(images[:, :, 30:] == -1.0)  # zero padding
    rgb = next(iter(data.make_dataset("mnist_5k", 16, 3, 8, seed=0)))
    assert rgb.shape == (8, 16, 16, 3) and -1.0 <= float(np.min(rgb)) and float(np.max(rgb)) <= 1.0
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
    plain = batches(data.make_dataset("mnist_5k:test", 28, 1, 250, shuffle=False, repeat=False))
    flipped = batches(data.make_dataset("mnist_5k:test", 28, 1, 250, shuffle=False, repeat=False, horizontal_flip=True, seed=5))
    again = batches(data.make_dataset("mnist_5k:test", 28, 1, 250, shuffle=False, repeat=False, horizontal_flip=True, seed=5))
    np.testing.assert_array_equal(flipped[0], again[0])
    plain, flipped = np.concatenate(plain), np.concatenate(flipped)
    same = np.all(flipped == plain, axis=(1, 2, 3))
    mirrored = np.all(flipped == plain[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert 150 < mirrored.sum() < 350  # about half of 500 (binomial sd 11)
    assert not data.default_horizontal_flip("mnist_5k:train") and not data.default_horizontal_flip("svhn_cropped")
    assert data.default_horizontal_flip("celeb_a") and data.default_horizontal_flip("cifar10:test")


# Crop geometry.


def test_crop_windows():
    def window(height, width, crop):
        return tuple(int(v) for v in data_transforms.crop_window(height, width, crop))

    assert window(218, 178, "celeba") == (57, 25, 128, 128)  # centred at (x=89, y=121)
    assert window(436, 356, "celeba") == (114, 50, 256, 256)  # the same window, scaled
    assert window(218, 178, "center") == (20, 0, 178, 178)
    assert window(30, 50, "center") == (0, 10, 30, 30)
    assert window(30, 50, "none") == (0, 0, 30, 50)
    assert data.default_crop("celeb_a:test") == "celeba" and data.default_crop("cifar10") == "center"
    with pytest.raises(ValueError, match="crop"):
        data.make_dataset("mnist_5k", 16, 1, 4, crop="square")


def test_celeba_crop_takes_exactly_ddims_window(tmp_path):
    Image.fromarray(ramp_image()).save(tmp_path / "face.png")
    kwargs = dict(shuffle=False, repeat=False, drop_remainder=False, crop="celeba")
    full = to_pixels(batches(data.make_dataset(str(tmp_path), 128, 3, 1, **kwargs))[0][0])
    rows, cols = np.meshgrid(np.arange(128), np.arange(128), indexing="ij")
    np.testing.assert_allclose(full[..., 0], CELEBA_TOP + rows, atol=1e-4)
    np.testing.assert_allclose(full[..., 1], CELEBA_LEFT + cols, atol=1e-4)
    # At 64x64 each output pixel averages a 2x2 block symmetrically: the ramp gives its centre.
    small = to_pixels(batches(data.make_dataset(str(tmp_path), 64, 3, 1, **kwargs))[0][0])
    inner = np.arange(1, 63)
    np.testing.assert_allclose(small[inner, 10, 0], CELEBA_TOP + 0.5 + 2 * inner, atol=0.51)
    np.testing.assert_allclose(small[10, inner, 1], CELEBA_LEFT + 0.5 + 2 * inner, atol=0.51)


def test_celeba_crop_of_a_jpeg_through_tfds_celeb_a(tmp_path):
    """The real tfds celeb_a path (auto crop, JPEG decoded inside the window) on known content."""
    encoded = io.BytesIO()
    Image.fromarray(window_image()).save(encoded, format="JPEG", quality=100)
    jpeg = encoded.getvalue()

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        assert isinstance(decoders["image"], tfds.decode.SkipDecoding)
        return tf.data.Dataset.from_tensors({"image": tf.constant(jpeg)}).repeat(3)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        images = batches(data.make_dataset("celeb_a", 128, 3, 2, shuffle=False, repeat=False, drop_remainder=False))
        shifted = batches(data.make_dataset("celeb_a", 128, 3, 3, shuffle=False, repeat=False, crop="center"))
    images = to_pixels(np.concatenate(images))
    assert images.shape == (3, 128, 128, 3)
    assert images.min() > 230  # nothing from outside the window...
    assert to_pixels(shifted[0]).min() < 30  # ...which a centre crop would include


# tfds datasets through mock_data.


@pytest.mark.parametrize(
    "name, size, channels, classes",
    [("celeb_a", 64, 3, 0), ("cifar10:test", 32, 3, 10), ("mnist", 32, 1, 10), ("mnist:train", 16, 3, 10)],
)
def test_tfds_datasets(name, size, channels, classes):
    with tfds.testing.mock_data(num_examples=10):
        assert data.num_classes(name) == classes
        dataset = data.make_dataset(name, size, channels, 4, with_labels=bool(classes), shuffle=False, repeat=False, drop_remainder=False)
        found = batches(dataset)
        train = batches(data.make_dataset(name, size, channels, 4, seed=0, horizontal_flip=True).take(3))
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
    with pytest.raises(ValueError, match="Unknown dataset 'cifar1'"):
        data.make_dataset("cifar1", 32, 3, 4)
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
    with pytest.raises(ValueError, match="Could not download and prepare the tfds dataset cifar10 .*ConnectionError"):
        data.make_dataset("cifar10", 32, 3, 4)


def test_tfds_offline_gets_no_retries_and_fails_within_seconds(monkeypatch, tmp_path):
    """Offline, tfds retried each request with back-off for about 245 s before failing (issue 18).
    Now, when no download host resolves, tfds runs without retries (files already downloaded
    or placed by hand still prepare) and the failure names the cause."""
    import socket
    import time

    from keras_ddpm import data_tfds
    from tensorflow_datasets.core.download import downloader

    def no_dns(host, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    retries = []

    def download_fails(self, *args, **kwargs):
        retries.append(downloader.MAX_RETRIES)
        raise ConnectionError("Max retries exceeded with url: https://www.cs.toronto.edu/")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_fails)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"cifar10 .*no internet access \(could not resolve storage\.googleapis\.com"):
        data.make_dataset("cifar10", 32, 3, 4, data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10 and retries == [0] and downloader.MAX_RETRIES == 10
    # A resolver that hangs counts as offline after the probe's timeout.
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: time.sleep(3))
    start = time.perf_counter()
    assert "within 0.5 s" in data_tfds.offline_reason(timeout=0.5)
    assert time.perf_counter() - start < 2


# Image folders.


def make_mixed_folder(root):
    """Two classes of images in every format, mode and size, plus unreadable files."""
    red, green = (255, 0, 0), (0, 255, 0)
    cats, dogs = root / "cats", root / "dogs" / "nested"
    cats.mkdir(parents=True)
    dogs.mkdir(parents=True)
    Image.new("RGB", (40, 30), red).save(cats / "rgb.jpg", quality=95)
    Image.new("RGBA", (30, 50), red + (128,)).save(cats / "rgba.png")
    Image.new("RGB", (20, 20), green).convert("P", palette=Image.ADAPTIVE).save(cats / "palette.png")
    Image.new("L", (64, 64), 255).save(cats / "gray.JPEG", quality=95)
    Image.new("RGB", (17, 23), green).save(dogs / "image.bmp")
    Image.new("RGB", (33, 33), green).save(dogs / "image.webp", lossless=True)
    Image.new("P", (24, 24), 0).save(dogs / "image.gif")
    Image.new("RGB", (24, 24), red).save(dogs / "trailing.jpg", quality=95)
    with open(dogs / "trailing.jpg", "ab") as f:
        f.write(b"camera metadata after the end marker")  # Pillow reads it; kept
    (cats / "notes.txt").write_text("not an image")  # ignored: not an image extension
    (cats / ".hidden.png").write_bytes(b"ignored")
    (cats / "corrupt.png").write_bytes(b"this is not a png file at all")
    whole = io.BytesIO()
    Image.fromarray(ramp_image(64, 64)).save(whole, format="JPEG", quality=95)
    (dogs / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    return [str(cats / "corrupt.png"), str(dogs / "truncated.jpg")]


def test_folder_with_mixed_formats_modes_sizes_and_corrupt_files(tmp_path):
    unreadable = make_mixed_folder(tmp_path)
    assert data.num_classes(str(tmp_path)) == 2
    dataset = data.make_dataset(str(tmp_path), 8, 3, 4, with_labels=True, shuffle=False, repeat=False, drop_remainder=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = batches(dataset), batches(dataset)
    messages = [str(w.message) for w in caught if "unreadable image" in str(w.message)]
    assert sorted(m.split()[3] for m in messages) == sorted(unreadable)  # once each, with the path
    for epoch in (first, second):
        images = np.concatenate([b[0] for b in epoch])
        labels = np.concatenate([b[1] for b in epoch])
        assert images.shape == (8, 8, 8, 3)
        # Sorted paths: cats/gray.JPEG, palette.png, rgb.jpg, rgba.png; dogs/nested/image.bmp, .gif, .webp, trailing.jpg
        np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 1])
    colors = np.round(to_pixels(images.mean(axis=(1, 2))))
    np.testing.assert_allclose(colors[0], [255, 255, 255], atol=2)  # grayscale -> RGB
    np.testing.assert_allclose(colors[1], [0, 255, 0], atol=2)  # palette -> RGB
    np.testing.assert_allclose(colors[3], [255, 0, 0], atol=2)  # RGBA: alpha dropped
    np.testing.assert_allclose(colors[4], [0, 255, 0], atol=2)  # BMP
    np.testing.assert_allclose(colors[5], [0, 0, 0], atol=2)  # GIF, first frame
    np.testing.assert_allclose(colors[6], [0, 255, 0], atol=2)  # WebP
    np.testing.assert_allclose(colors[7], [255, 0, 0], atol=4)  # JPEG with trailing bytes
    gray = np.concatenate(batches(data.make_dataset(str(tmp_path), 8, 1, 8, shuffle=False, repeat=False, drop_remainder=False)))
    assert gray.shape == (8, 8, 8, 1)
    np.testing.assert_allclose(to_pixels(gray[1].mean()), 150, atol=2)  # luma of pure green: 0.587 * 255


def test_flat_folder_has_no_labels_and_shuffles_files(tmp_path):
    for i in range(12):
        Image.new("L", (8, 8), i * 20).save(tmp_path / f"{i:02d}.png")
    assert data.num_classes(str(tmp_path)) == 0
    with pytest.raises(ValueError, match="no labels"):
        data.make_dataset(str(tmp_path), 8, 1, 4, with_labels=True)
    ordered = np.concatenate(batches(data.make_dataset(str(tmp_path), 8, 1, 5, shuffle=False, repeat=False, drop_remainder=False)))
    np.testing.assert_allclose(to_pixels(ordered[:, 0, 0, 0]), np.arange(12) * 20, atol=1e-3)
    shuffled = np.concatenate(batches(data.make_dataset(str(tmp_path), 8, 1, 4, seed=1, repeat=False)))
    values = np.round(to_pixels(shuffled[:, 0, 0, 0]) / 20).astype(int)
    assert sorted(values.tolist()) == list(range(12)) and values.tolist() != list(range(12))


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No images"):
        data.make_dataset(str(tmp_path), 8, 3, 4)
    with pytest.raises(FileNotFoundError, match="No folder at"):
        data.make_dataset(str(tmp_path / "missing"), 8, 3, 4)
    with pytest.raises(FileNotFoundError, match="No folder at"):
        data.num_classes("./no/such/folder")


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
        assert any(name.startswith("images-") and "_16px_3ch_center" in name for name in os.listdir(cache))
    training = batches(data.make_dataset(str(images), 16, 3, 4, cache=cache, seed=0).take(4))
    assert all(b.shape == (4, 16, 16, 3) for b in training)


@pytest.mark.parametrize("size", [32, 24])
def test_folder_batches_have_a_static_image_shape_at_any_size(tmp_path, size):
    """32 goes through the 28 -> 32 padding branch (a tf.cond), which lost the static shape: a
    traced training step then saw (N, None, None, C) and the attention block failed (issue 18)."""
    for i in range(4):
        Image.fromarray(ramp_image(40, 40 + i)).save(tmp_path / f"{i}.png")
    dataset = data.make_dataset(str(tmp_path), size, 1, 2, seed=0)
    assert tuple(dataset.element_spec.shape) == (2, size, size, 1)


# Training with it.


def test_dataset_is_fit_input_for_the_tiny_model():
    """Class-conditional, so labels flow too; under TensorFlow through prefetch_to_device
    (to the CPU here: the same iterator mechanics as the GPU path)."""
    from keras_ddpm import DiffusionModel

    device = "/CPU:0" if keras.backend.backend() == "tensorflow" else "auto"
    dataset = data.make_dataset("mnist_5k", 16, 1, 4, with_labels=True, seed=0, prefetch_to_device=device)
    model = DiffusionModel.from_preset("tiny", seed=0, num_classes=10)
    model.compile()
    history = model.fit(dataset, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_cli_reports_dataset_errors_in_one_line(tmp_path):
    from click.testing import CliRunner

    from cli import cli

    for dataset, message in [(str(tmp_path), "No images"), ("cifar1", "Unknown dataset 'cifar1'")]:
        result = CliRunner().invoke(cli, ["train", "--dataset", dataset, "--preset", "tiny", "--out", str(tmp_path / "run")])
        assert result.exit_code == 1
        assert result.output.startswith("Error: ") and message in result.output
        assert "Traceback" not in result.output


def test_without_tensorflow_the_embedded_digits_come_as_the_same_numpy_batches(monkeypatch):
    # A JAX/PyTorch machine without TensorFlow (the lent GPU box) trains on mnist_5k this way.
    expected = batches(data.make_dataset("mnist_5k:test", 32, 1, 100, with_labels=True, shuffle=False, repeat=False))
    rgb_expected = batches(data.make_dataset("mnist_5k:test", 16, 3, 100, shuffle=False, repeat=False))
    monkeypatch.setattr(data, "tensorflow_installed", lambda: False)
    found = data.make_dataset("mnist_5k:test", 32, 1, 100, with_labels=True, shuffle=False, repeat=False)
    assert isinstance(found, keras.utils.PyDataset) and found.num_batches == 5
    images = np.concatenate([found[i][0] for i in range(5)])
    labels = np.concatenate([found[i][1] for i in range(5)])
    np.testing.assert_array_equal(images, np.concatenate([b[0] for b in expected]))
    np.testing.assert_array_equal(labels, np.concatenate([b[1] for b in expected]))
    rgb = np.concatenate([b for b in data.make_dataset("mnist_5k:test", 16, 3, 100, shuffle=False, repeat=False)])
    assert rgb.shape == (500, 16, 16, 3)
    assert np.abs(rgb - np.concatenate(rgb_expected)).max() <= 2 / 127.5  # PIL's vs TF's antialiased resize
    # Training: infinite, reshuffled every pass, seeded, flips are mirror images.
    train = data.make_dataset("mnist_5k:test", 32, 1, 100, seed=1, horizontal_flip=True)
    assert train.num_batches is None and train[0].shape == (100, 32, 32, 1)
    first_pass = np.concatenate([train[i] for i in range(5)])
    second_pass = np.concatenate([train[i] for i in range(5, 10)])
    assert not np.array_equal(first_pass, second_pass)
    np.testing.assert_array_equal(train[7], data.make_dataset("mnist_5k:test", 32, 1, 100, seed=1, horizontal_flip=True)[7])
    plain = np.concatenate([b[0] for b in expected])

    def flip_invariant(x):  # one pass is a permutation of the images, each maybe mirrored
        return np.sort(np.minimum(x, x[:, :, ::-1]).reshape(len(x), -1).sum(axis=1))

    np.testing.assert_allclose(flip_invariant(first_pass), flip_invariant(plain), atol=1e-3)
    unflipped = np.concatenate([data.make_dataset("mnist_5k:test", 32, 1, 100, seed=1)[i] for i in range(5)])
    mirrored = np.all(first_pass == unflipped[:, :, ::-1], axis=(1, 2, 3)) & ~np.all(first_pass == unflipped, axis=(1, 2, 3))
    assert 0.35 < mirrored.mean() < 0.65
