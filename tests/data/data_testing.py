"""What the tests of keras_ddpm.data share: images that say where each pixel came from."""

import numpy as np

CELEBA_TOP, CELEBA_LEFT = 57, 25  # DDIM: Crop(x1=57, x2=185, y1=25, y2=153)


def batches(dataset):
    """All batches as numpy: a list of images, or of (images, labels)."""
    return [
        tuple(np.asarray(t) for t in b) if isinstance(b, tuple) else np.asarray(b) for b in dataset
    ]


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
