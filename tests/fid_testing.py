"""Shared stand-ins for FID tests: a tiny feature extractor and folders of noise images."""

import os

import keras
import numpy as np
from PIL import Image

from keras_ddpm import fid


def tiny_extractor(name="tiny-test", batch_size=8, seed=0):
    """A cheap stand-in for InceptionV3 with the same interface (32x32 input, 8-d features)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    return fid.FeatureExtractor(model, name, input_size=32, batch_size=batch_size)


def write_images(directory, count, size=16, seed=0, high=256):
    """`count` grayscale PNGs of uniform noise in [0, high), numbered from 000.png; the folder."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, high, (size, size), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(directory, f"{i:03d}.png"))
    return str(directory)
