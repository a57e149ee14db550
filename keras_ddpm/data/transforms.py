"""Image transforms of the input pipelines: decode, crop, resize, channels, [-1, 1], flips.

Everything here is TensorFlow (the pipelines are tf.data, whatever the Keras backend).
Examples travel as uint8 until the batch is formed, so a cache holds 1 byte a pixel.

Crops (`crop=`):
    center   the largest centred square, the usual choice for non-square images.
    celeba   the DDIM / StyleGAN CelebA crop: the 128x128 window centred at (x=89, y=121)
             of the 178x218 aligned CelebA image, i.e. rows 57..184 and columns 25..152
             (`Crop(x1=57, x2=185, y1=25, y2=153)` in the DDIM authors' datasets/__init__.py).
             Images of another size get the same window scaled to their size.
    none     no crop: the whole image is resized to a square.
"""

import numpy as np
import tensorflow as tf

from keras_ddpm.data import image_files
from keras_ddpm.sampling_options import CROPS

CELEBA_IMAGE_SHAPE = (218, 178)  # (height, width) of aligned CelebA
CELEBA_CROP_CENTER = (89, 121)  # (x, y)
CELEBA_CROP_SIZE = 128

# Magic numbers of the formats tf.io.decode_image reads.
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk: its type and fixed CRC


def crop_window(height, width, crop):
    """(top, left, crop_height, crop_width), int32 scalars, of `crop` in a height x width image."""
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    if crop == "center":
        side = tf.minimum(height, width)
        return (height - side) // 2, (width - side) // 2, side, side
    if crop == "celeba":
        (ref_height, ref_width), (x, y) = CELEBA_IMAGE_SHAPE, CELEBA_CROP_CENTER
        half = CELEBA_CROP_SIZE // 2

        def scaled(value, size, ref):
            return tf.cast(tf.round(value * tf.cast(size, tf.float32) / ref), tf.int32)

        top, left = scaled(y - half, height, ref_height), scaled(x - half, width, ref_width)
        bottom, right = scaled(y + half, height, ref_height), scaled(x + half, width, ref_width)
        return top, left, bottom - top, right - left
    if crop == "none":
        return tf.constant(0), tf.constant(0), height, width
    raise ValueError(f"crop must be one of {CROPS}. Received: crop={crop!r}")


def crop_image(image, crop):
    """Crops a decoded (H, W, C) image."""
    shape = tf.shape(image)
    top, left, crop_height, crop_width = crop_window(shape[0], shape[1], crop)
    return image[top : top + crop_height, left : left + crop_width]


def looks_decodable(contents):
    """True when `contents` starts like a JPEG, PNG, GIF, BMP or WebP file and, for JPEG and
    PNG, ends with the end marker (a truncated download does not): such files take the fast
    TensorFlow decoder; anything else goes through `decode_with_pillow`, which can say why."""
    head = tf.strings.substr(contents, 0, 12)
    length = tf.strings.length(contents)
    is_jpeg = tf.strings.substr(head, 0, 3) == _JPEG_MAGIC
    is_png = tf.strings.substr(head, 0, 8) == _PNG_MAGIC
    other = (
        (tf.strings.substr(head, 0, 4) == b"GIF8")
        | (tf.strings.substr(head, 0, 2) == b"BM")
        | ((tf.strings.substr(head, 0, 4) == b"RIFF") & (tf.strings.substr(head, 8, 4) == b"WEBP"))
    )
    jpeg_ok = is_jpeg & (tf.strings.substr(contents, tf.maximum(length - 2, 0), 2) == _JPEG_END)
    png_ok = is_png & (tf.strings.substr(contents, tf.maximum(length - 8, 0), 8) == _PNG_END)
    return jpeg_ok | png_ok | other


def decode_and_crop(contents, crop, channels):
    """Encoded image bytes -> the uint8 crop, (h, w, channels).

    JPEGs are decoded only inside the crop window (`tf.image.decode_and_crop_jpeg`), which
    roughly halves the decoding cost of the CelebA crop; GIFs give their first frame.
    """
    is_jpeg = tf.strings.substr(contents, 0, 3) == _JPEG_MAGIC

    def jpeg():
        shape = tf.io.extract_jpeg_shape(contents)
        window = tf.stack(crop_window(shape[0], shape[1], crop))
        return tf.image.decode_and_crop_jpeg(contents, window, channels=channels)

    def other():
        image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
        return crop_image(image, crop)

    image = tf.cond(is_jpeg, jpeg, other)
    image.set_shape([None, None, channels])
    return image


def decode_with_pillow(contents, path, report):
    """The slow path for files `looks_decodable` doubts: (uint8 (H, W, 3) image, ok).

    Pillow (`image_files.read_image`) decodes what TensorFlow would refuse but is still an image
    (e.g. a JPEG with bytes after its end marker, CMYK, TIFF); an unreadable file gives ok=False
    and `report(path, reason)`.
    """

    def decode(contents, path):
        path = path.numpy().decode("utf-8", "replace")
        try:
            return image_files.read_image(contents.numpy(), channels=3, name=path), True
        except image_files.UnreadableImageError as error:
            report(path, error.reason)
        return np.zeros((1, 1, 3), np.uint8), False

    image, ok = tf.py_function(decode, [contents, path], [tf.uint8, tf.bool])
    image.set_shape([None, None, 3])
    ok.set_shape([])
    return image, ok


def resize_image(image, image_size):
    """uint8 (h, w, C) -> uint8 (size, size, C), antialiased (like PIL's resize).

    28x28 images going to 32x32 (MNIST in a power-of-two UNet) are zero-padded by 2 pixels
    a side instead, as is usual; images already of the size are kept as they are.
    """
    shape = tf.shape(image)

    def pad():
        return tf.pad(image, [[2, 2], [2, 2], [0, 0]])

    def resize():
        size = (image_size, image_size)
        resized = tf.image.resize(image, size, method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    if image_size == 32:
        exact, fit = (shape[0] == 28) & (shape[1] == 28), pad
    else:
        exact, fit = (shape[0] == image_size) & (shape[1] == image_size), lambda: image
    # tf.cond forgets the branches' common static shape; models need it (batch, size, size, C).
    return tf.ensure_shape(tf.cond(exact, fit, resize), [image_size, image_size, None])


def convert_channels(image, image_channels):
    """Grayscale is repeated for RGB models; RGB becomes luma (ITU-R 601, like PIL's "L")."""
    channels = image.shape[-1]
    if channels == image_channels:
        return image
    if channels == 1 and image_channels == 3:
        return tf.repeat(image, 3, axis=-1)
    if channels == 3 and image_channels == 1:
        return tf.image.rgb_to_grayscale(image)
    raise ValueError(f"Cannot convert {channels}-channel images to {image_channels} channels.")


def to_model_range(images):
    """uint8 -> float32 in [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def random_flip_batch(images, seed):
    """Flips each image of a (N, H, W, C) batch left-right with probability 1/2.

    Stateless: `seed` is a (2,) int tensor, e.g. (user seed, batch index), so a pipeline
    with a seed gives the same flips every run.
    """
    count = tf.shape(images)[0]
    flip = tf.cast(tf.random.stateless_uniform([count], seed=seed) < 0.5, tf.int32)
    # Partition and stitch rather than tf.where(flip, reversed, images): on a CPU it reverses
    # only the flipped half and is ~8x faster than a broadcasting tf.where.
    kept, flipped = tf.dynamic_partition(images, flip, 2)
    kept_at, flipped_at = tf.dynamic_partition(tf.range(count), flip, 2)
    return tf.dynamic_stitch([kept_at, flipped_at], [kept, tf.reverse(flipped, axis=[2])])
