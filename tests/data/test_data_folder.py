"""keras_ddpm.data.folder: local image folders, with and without class subfolders, through
`make_dataset`; unreadable files are skipped and reported once, as one plain line on stderr."""

import io
import warnings

import numpy as np
import pytest
from data_testing import batches
from data_testing import ramp_image
from data_testing import to_pixels
from PIL import Image

from keras_ddpm import data

pytest.importorskip("tensorflow_datasets")
tf = data.import_tensorflow()

STREAM = dict(shuffle=False, repeat=False, drop_remainder=False)


def make_mixed_folder(root):
    """Two classes of images in every format, mode and size, plus unreadable files."""
    red, green = (255, 0, 0), (0, 255, 0)
    cats, dogs = root / "cats", root / "dogs" / "nested"
    cats.mkdir(parents=True)
    dogs.mkdir(parents=True)
    Image.new("RGB", (40, 30), red).save(cats / "rgb.jpg", quality=95)
    Image.new("RGBA", (30, 50), red + (128,)).save(cats / "rgba.png")
    palette = Image.new("RGB", (20, 20), green).convert("P", palette=Image.ADAPTIVE)
    palette.save(cats / "palette.png")
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


def test_folder_with_mixed_formats_modes_sizes_and_corrupt_files(tmp_path, capsys):
    unreadable = make_mixed_folder(tmp_path)
    assert data.num_classes(str(tmp_path)) == 2
    dataset = data.make_dataset(str(tmp_path), 8, 3, 4, with_labels=True, **STREAM)
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = batches(dataset), batches(dataset)
    assert not [w for w in caught if "unreadable" in str(w.message)]  # not Python's warnings
    lines = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
    # Once each (both epochs), one line naming the file and Pillow's reason.
    assert sorted(lines) == [
        f"keras_ddpm: skipping unreadable image {unreadable[0]} (not an image in a format Pillow "
        "reads)",
        f"keras_ddpm: skipping unreadable image {unreadable[1]} (OSError: Truncated File Read)",
    ]
    for epoch in (first, second):
        images = np.concatenate([b[0] for b in epoch])
        labels = np.concatenate([b[1] for b in epoch])
        assert images.shape == (8, 8, 8, 3)
        # Sorted paths: cats/gray.JPEG, palette.png, rgb.jpg, rgba.png;
        # dogs/nested/image.bmp, .gif, .webp, trailing.jpg
        np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 1])
    colors = np.round(to_pixels(images.mean(axis=(1, 2))))
    np.testing.assert_allclose(colors[0], [255, 255, 255], atol=2)  # grayscale -> RGB
    np.testing.assert_allclose(colors[1], [0, 255, 0], atol=2)  # palette -> RGB
    np.testing.assert_allclose(colors[3], [255, 0, 0], atol=2)  # RGBA: alpha dropped
    np.testing.assert_allclose(colors[4], [0, 255, 0], atol=2)  # BMP
    np.testing.assert_allclose(colors[5], [0, 0, 0], atol=2)  # GIF, first frame
    np.testing.assert_allclose(colors[6], [0, 255, 0], atol=2)  # WebP
    np.testing.assert_allclose(colors[7], [255, 0, 0], atol=4)  # JPEG with trailing bytes
    gray = np.concatenate(batches(data.make_dataset(str(tmp_path), 8, 1, 8, **STREAM)))
    assert gray.shape == (8, 8, 8, 1)
    # The luma of pure green: 0.587 * 255.
    np.testing.assert_allclose(to_pixels(gray[1].mean()), 150, atol=2)


def test_flat_folder_has_no_labels_and_shuffles_files(tmp_path):
    for i in range(12):
        Image.new("L", (8, 8), i * 20).save(tmp_path / f"{i:02d}.png")
    assert data.num_classes(str(tmp_path)) == 0
    with pytest.raises(ValueError, match="no labels"):
        data.make_dataset(str(tmp_path), 8, 1, 4, with_labels=True)
    ordered = np.concatenate(batches(data.make_dataset(str(tmp_path), 8, 1, 5, **STREAM)))
    np.testing.assert_allclose(to_pixels(ordered[:, 0, 0, 0]), np.arange(12) * 20, atol=1e-3)
    shuffled = data.make_dataset(str(tmp_path), 8, 1, 4, seed=1, repeat=False)
    values = np.round(to_pixels(np.concatenate(batches(shuffled))[:, 0, 0, 0]) / 20).astype(int)
    assert sorted(values.tolist()) == list(range(12)) and values.tolist() != list(range(12))


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No images"):
        data.make_dataset(str(tmp_path), 8, 3, 4)
    with pytest.raises(FileNotFoundError, match="No folder at"):
        data.make_dataset(str(tmp_path / "missing"), 8, 3, 4)
    with pytest.raises(FileNotFoundError, match="No folder at"):
        data.num_classes("./no/such/folder")


@pytest.mark.parametrize("size", [32, 24])
def test_folder_batches_have_a_static_image_shape_at_any_size(tmp_path, size):
    """32 goes through the 28 -> 32 padding branch (a tf.cond), which lost the static shape: a
    traced training step then saw (N, None, None, C) and the attention block failed (issue 18)."""
    for i in range(4):
        Image.fromarray(ramp_image(40, 40 + i)).save(tmp_path / f"{i}.png")
    dataset = data.make_dataset(str(tmp_path), size, 1, 2, seed=0)
    assert tuple(dataset.element_spec.shape) == (2, size, size, 1)
