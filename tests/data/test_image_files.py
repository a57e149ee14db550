"""keras_ddpm.data.image_files: one extension list, one folder listing and one Pillow reader, used
by the folder pipeline, FID, the inpainting mask loader and the app's uploads alike."""

import os
import warnings

import numpy as np
import pytest
from data_testing import batches
from data_testing import to_pixels
from PIL import Image

from keras_ddpm import data
from keras_ddpm import fid
from keras_ddpm import images
from keras_ddpm import sample_request
from keras_ddpm.data import image_files
from keras_ddpm.data.image_files import IMAGE_EXTENSIONS
from keras_ddpm.data.image_files import UnreadableImageError
from keras_ddpm.data.image_files import list_images
from keras_ddpm.data.image_files import read_image

# Pillow's writer for each extension, and options that keep a flat colour within a few levels.
WRITERS = {
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".png": ("PNG", {}),
    ".webp": ("WEBP", {"lossless": True}),
    ".bmp": ("BMP", {}),
    ".gif": ("GIF", {}),
    ".tif": ("TIFF", {}),
    ".tiff": ("TIFF", {}),
}


def write_every_format(folder):
    """One flat-coloured 12x10 image per extension (every other one in upper case); returns the
    paths in sorted order and their colours."""
    folder.mkdir(exist_ok=True)
    written = []
    for index, extension in enumerate(IMAGE_EXTENSIONS):
        color = (40 * index % 256, 255 - 30 * index, 128)
        name = f"{index:02d}" + (extension.upper() if index % 2 else extension)
        format_, options = WRITERS[extension]
        Image.new("RGB", (12, 10), color).save(folder / name, format=format_, **options)
        written.append((str(folder / name), color))
    return [path for path, _ in written], np.array([color for _, color in written], np.float64)


def test_every_extension_has_a_writer_here():
    assert sorted(WRITERS) == sorted(IMAGE_EXTENSIONS)
    assert len(set(IMAGE_EXTENSIONS)) == len(IMAGE_EXTENSIONS)
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


def test_every_listed_extension_is_read_by_pillow(tmp_path):
    paths, colors = write_every_format(tmp_path / "all")
    assert list_images(str(tmp_path / "all")) == paths
    for path, color in zip(paths, colors, strict=True):
        image = read_image(path, channels=3)
        assert image.shape == (10, 12, 3) and image.dtype == np.uint8
        np.testing.assert_allclose(image.mean(axis=(0, 1)), color, atol=3, err_msg=path)
    # The two callers that read files one by one: FID's folders and the app's uploads.
    (batch,) = fid.folder_batches(str(tmp_path / "all"), len(paths), 8, 3)
    assert batch.shape == (len(paths), 8, 8, 3)
    np.testing.assert_allclose(batch.mean(axis=(1, 2)), colors, atol=3)
    upload = sample_request.load_image_file(paths[-1], 8, 3)
    np.testing.assert_allclose(to_pixels(upload).mean(axis=(0, 1)), colors[-1], atol=3)


def test_every_listed_extension_is_read_by_the_folder_pipeline(tmp_path):
    """TensorFlow decodes every format but TIFF; `transforms.looks_decodable` sends TIFF to the
    Pillow fallback, so the pipeline reads each listed extension and skips none."""
    pytest.importorskip("tensorflow")
    tf = data.import_tensorflow()
    from keras_ddpm.data import transforms

    paths, colors = write_every_format(tmp_path / "all")
    decodable = [
        bool(transforms.looks_decodable(tf.constant(open(path, "rb").read()))) for path in paths
    ]
    assert decodable == [not path.lower().endswith((".tif", ".tiff")) for path in paths]
    dataset = data.make_dataset(
        str(tmp_path / "all"), 8, 3, 4, shuffle=False, repeat=False, drop_remainder=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = np.concatenate(batches(dataset))
    assert not [w for w in caught if "unreadable image" in str(w.message)]
    assert found.shape == (len(paths), 8, 8, 3)
    np.testing.assert_allclose(to_pixels(found).mean(axis=(1, 2)), colors, atol=3)


def test_list_images_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / ".cache").mkdir()
    for name in ["z.png", "a.JPG", "b/deeper/c.tiff", "b/m.gif", ".hidden.png", ".cache/x.png"]:
        Image.new("L", (4, 4)).save(tmp_path / name, format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "image.png.bak").write_bytes(b"")
    expected = ["a.JPG", "b/deeper/c.tiff", "b/m.gif", "z.png"]
    assert list_images(str(tmp_path)) == [os.path.join(str(tmp_path), p) for p in expected]
    with pytest.raises(FileNotFoundError, match=r"^No image folder at .*missing\.$"):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    extensions = "jpg, jpeg, png, webp, bmp, gif, tif, tiff"
    with pytest.raises(FileNotFoundError, match=rf"^No images \({extensions}\) found under "):
        list_images(str(tmp_path / "empty"))


def test_read_image_channels_and_size(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (30, 20, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "rgba.png")), rgba[..., :3])
    gray = read_image(str(tmp_path / "gray.png"))  # the file's channels: one
    np.testing.assert_array_equal(gray, rgba[..., :1])
    assert read_image(str(tmp_path / "gray.png"), channels=3).shape == (30, 20, 3)
    luma = read_image(str(tmp_path / "rgba.png"), channels=1)
    expected = np.asarray(Image.fromarray(rgba[..., :3]).convert("L"))[..., None]
    np.testing.assert_array_equal(luma, expected)
    resized = read_image(str(tmp_path / "rgba.png"), size=8)
    expected = Image.fromarray(rgba[..., :3]).resize((8, 8), resample=Image.BICUBIC)
    np.testing.assert_array_equal(resized, np.asarray(expected))
    contents = (tmp_path / "rgba.png").read_bytes()
    np.testing.assert_array_equal(read_image(contents, channels=3), rgba[..., :3])


def test_an_unreadable_file_gives_one_sentence(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not a png file at all")
    with pytest.raises(UnreadableImageError) as error:
        read_image(str(corrupt))
    reason = "not an image in a format Pillow reads"
    assert str(error.value) == f"Could not read {corrupt} as an image ({reason})."
    assert isinstance(error.value, ValueError) and error.value.reason == reason
    truncated = tmp_path / "truncated.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "w.png")  # 4 KB: noise does not compress
    truncated.write_bytes((tmp_path / "w.png").read_bytes()[:2000])
    for source, name in [(str(truncated), "truncated.png"), (truncated.read_bytes(), "upload")]:
        with pytest.raises(UnreadableImageError, match=rf"^Could not read {name} as an image \("):
            read_image(source, name=name)
    with pytest.raises(UnreadableImageError, match=r"missing\.png as an image \(no such file\)\.$"):
        read_image(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match=r"^w\.png has 64x64 pixels, more than 4,000\.$"):
        read_image(str(tmp_path / "w.png"), max_pixels=4000, name="w.png")
    # Every caller says the same sentence.
    for read in [
        lambda: list(fid.folder_batches(str(tmp_path), 4, 8, 1)),
        lambda: images.load_mask(str(corrupt), 8),
        lambda: sample_request.load_image_file(str(corrupt), 8, 1),
    ]:
        sentence = r"^Could not read .*corrupt\.png as an image"
        with pytest.raises(ValueError, match=sentence) as error:
            read()
        assert "\n" not in str(error.value)


def test_one_reader_and_one_extension_list():
    assert fid.read_image is read_image and fid.list_images is list_images
    assert data.IMAGE_EXTENSIONS is image_files.IMAGE_EXTENSIONS
    assert not hasattr(fid, "IMAGE_EXTENSIONS")
