"""Image grids and files."""

import math
import os

import numpy as np
from PIL import Image

from keras_ddpm.data.image_files import read_image


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


def save_gif(frames, path, frame_ms=80, hold_ms=2000, loop=0):
    """Writes uint8 frames (F, H, W, C) as an animated GIF; the last frame is shown for `hold_ms`.

    Every frame is kept (Pillow would otherwise merge identical neighbours), so the file has
    exactly F frames.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) < 1:
        raise ValueError(f"frames must be (F, H, W, C) with F >= 1. Received: shape={frames.shape}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    images = [to_pil(frame) for frame in frames]
    durations = [frame_ms] * (len(images) - 1) + [hold_ms]
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=durations,
        loop=loop,
        optimize=False,
        disposal=1,
    )
    return path


def read_gif(path):
    """The frames of a GIF as uint8 (F, H, W, C) (C = 1 for grayscale) and their durations in ms."""
    frames, durations = [], []
    with Image.open(path) as gif:
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info.get("duration", 0))
            frame = np.asarray(
                gif.convert("L" if gif.mode in ("L", "P") and _is_gray(gif) else "RGB")
            )
            frames.append(frame[..., None] if frame.ndim == 2 else frame)
    return np.stack(frames), durations


def _is_gray(image):
    palette = image.getpalette()
    if image.mode == "L" or palette is None:
        return True
    rgb = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


def parse_box(text, image_size):
    """'x0,y0,x1,y1' (pixels, x1/y1 exclusive) -> a (H, W, 1) float mask, 1 inside the box."""
    try:
        x0, y0, x1, y1 = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"A mask box is 'x0,y0,x1,y1' in pixels. Received: {text!r}") from None
    if not (0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size):
        raise ValueError(
            f"The mask box {text!r} must lie inside the {image_size}x{image_size} image with x0 < "
            "x1, y0 < y1."
        )
    mask = np.zeros((image_size, image_size, 1), np.float32)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def load_mask(path, image_size):
    """A mask image (white = region to fill), resized to the model's size -> (H, W, 1) in {0, 1}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No mask image at {path}.")
    gray = read_image(path, channels=1, size=image_size, resample=Image.NEAREST)
    return (gray >= 128).astype(np.float32)
