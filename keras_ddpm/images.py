"""Image grids and files."""

import math
import os

import numpy as np
from PIL import Image


def make_grid(images, ncols=None, padding=2, pad_value=255):
    """Tiles uint8 images (N, H, W, C) into one (rows*H + ..., cols*W + ..., C) array.

    `ncols` defaults to ceil(sqrt(N)) for a square-ish grid; `padding` pixels of
    `pad_value` separate the tiles and surround the grid.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C). Received: shape={images.shape}")
    n, height, width, channels = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full(
        (nrows * (height + padding) + padding, ncols * (width + padding) + padding, channels),
        pad_value,
        dtype=images.dtype,
    )
    for index, image in enumerate(images):
        row, col = divmod(index, ncols)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid


def to_pil(image):
    """uint8 (H, W, 1 or 3) -> PIL image (grayscale or RGB)."""
    image = np.asarray(image)
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_image(image, path):
    """Writes one uint8 (H, W, C) array; the format follows the file extension."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    to_pil(image).save(path)
    return path
