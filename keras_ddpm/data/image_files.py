"""Image files: the extensions keras_ddpm reads, finding them in a folder, and one Pillow reader.

Every reader of image files goes through here: the folder pipeline (`folder` lists with
`list_images`; the tf.data decoder falls back to `read_image` for files TensorFlow cannot
decode, such as TIFF), FID's image folders, inpainting's mask images and the sampling app's
uploads.
"""

import io
import os

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

# What both Pillow and the folder pipeline read (TensorFlow decodes all but TIFF, which the
# pipeline hands to Pillow). GIFs and other animations give their first frame.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow modes that `read_image` keeps as one channel when no channel count is asked for.
GRAYSCALE_MODES = ("1", "L", "I;16", "I", "F")
# The largest image (width x height) the sampling app accepts as an upload.
MAX_PIXELS = 50_000_000


class UnreadableImageError(ValueError):
    """An image file that Pillow cannot read: one sentence naming the file and the reason."""

    def __init__(self, name, reason):
        super().__init__(f"Could not read {name} as an image ({reason}).")
        self.name = name
        self.reason = reason

    def __reduce__(self):  # pickled as its two parts (e.g. out of a worker process)
        return type(self), (self.name, self.reason)


def list_images(root):
    """Sorted paths of the image files under `root`, searched recursively.

    A file counts when its extension, in any case, is one of `IMAGE_EXTENSIONS`; hidden files and
    folders (".name") are skipped and folder links followed. Paths start with `root` as given.
    Raises FileNotFoundError when `root` is not a folder or holds no image.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"No image folder at {root}.")
    paths = []
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        paths.extend(
            os.path.join(directory, name)
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    if not paths:
        extensions = ", ".join(extension[1:] for extension in IMAGE_EXTENSIONS)
        raise FileNotFoundError(f"No images ({extensions}) found under {root}.")
    return sorted(paths)


def read_image(
    source, channels=None, size=None, resample=Image.BICUBIC, max_pixels=None, name=None
):
    """An image file, a path or its bytes, decoded by Pillow -> uint8 (H, W, channels).

    Args:
        source: a path, or the file's contents as bytes.
        channels: 3 (RGB; alpha dropped, palettes expanded), 1 (Pillow's "L", ITU-R 601 luma),
            or None: 1 for grayscale files (`GRAYSCALE_MODES`), 3 for the others.
        size: resize to size x size with Pillow's `resample` filter (antialiased when
            shrinking), unless the image has that size already.
        max_pixels: refuse images with more pixels than this, before decoding them (None:
            Pillow's own decompression-bomb limit only).
        name: how error messages call the file (default: `source` when it is a path).

    Raises:
        UnreadableImageError (a ValueError): the file is missing, not an image or damaged.
        ValueError: the image has more than `max_pixels` pixels.
    """
    name = name or (os.fspath(source) if not isinstance(source, bytes) else "the image")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            too_large = bool(max_pixels) and width * height > max_pixels
            if not too_large:
                array = _decode(image, channels, size, resample)
    except FileNotFoundError:
        raise UnreadableImageError(name, "no such file") from None
    except UnidentifiedImageError:
        raise UnreadableImageError(name, "not an image in a format Pillow reads") from None
    except Exception as error:  # Pillow raises many kinds for damaged data
        raise UnreadableImageError(name, f"{type(error).__name__}: {error}") from None
    if too_large:
        raise ValueError(f"{name} has {width}x{height} pixels, more than {max_pixels:,}.")
    return array


def _decode(image, channels, size, resample):
    channels = channels or (1 if image.mode in GRAYSCALE_MODES else 3)
    image = image.convert("L" if channels == 1 else "RGB")
    if size and image.size != (size, size):
        image = image.resize((size, size), resample=resample)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array
