import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_ddpm import backend

backend.configure_xla_cpu()  # before any JAX computation, as the CLI and the app do

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "torch", "jax")


def randomize_weights(model, scale=0.05, seed=0):
    """Replaces every weight of the network (and its EMA copy) with small random values.

    Fresh DDPM networks output exactly zero (zero-initialised output layers), which would
    make numerical comparisons trivial.
    """
    rng = np.random.default_rng(seed)
    for weight, ema_weight in zip(model.network.weights, model.ema_network.weights):
        value = (rng.standard_normal(weight.shape) * scale).astype("float32")
        if "gamma" in weight.path:
            value += 1.0
        weight.assign(value)
        ema_weight.assign(value)
    return model


def run_python(code, backend, timeout=300):
    """Runs `code` in a fresh interpreter under `backend`; returns stdout (raises on failure)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode:
        raise AssertionError(f"{backend} subprocess failed:\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture
def tiny_images():
    """32 random 16x16 grayscale images in [-1, 1]."""
    return np.random.default_rng(0).uniform(-1, 1, (32, 16, 16, 1)).astype("float32")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
