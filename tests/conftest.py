import atexit
import os
import shutil
import subprocess
import sys
import tempfile

# JAX compiles the same tiny programs (a train step, a sampling loop) in many tests: its persistent
# compilation cache, in a folder of this session's own (and its child processes', which inherit the
# variables), compiles each once. Set before JAX is imported (by keras, below).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="keras_ddpm_jax_cache_")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

# The tests' networks are tiny, so compiling their programs costs far more than running them:
# XLA's CPU code generation without LLVM's optimisation passes compiles the same programs faster
# (JAX's, and TensorFlow's XLA sampling loops; child processes inherit it).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_ddpm import backend  # noqa: E402
from keras_ddpm.backend import child_environment  # noqa: E402

backend.configure_xla_cpu()  # before any JAX computation, as the CLI and the app do

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

    # Likewise TensorFlow's graph optimiser (Grappler) rewrites each new traced function before
    # its first run: seconds for a train step, which the tests' tiny steps never win back.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})

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


def compile_for_numbers(model, **kwargs):
    """`model.compile(**kwargs)` for a test that checks the numbers of a few steps, not their
    compilation: eager where that is quicker (TensorFlow traces a step for about 20 s, PyTorch is
    eager anyway), jitted on JAX (whose eager mode compiles every operation on its own)."""
    model.compile(run_eagerly=keras.backend.backend() != "jax", **kwargs)
    return model


def run_python(code, backend, timeout=300):
    """Runs `code` in a fresh interpreter under `backend`; returns stdout (raises on failure)."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=child_environment(backend),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode:
        raise AssertionError(f"{backend} subprocess failed:\n{result.stderr[-3000:]}")
    return result.stdout


ONCE_LANE = "torch"  # where `./run_tests.sh` runs a test marked `once` without a `lane`


def pytest_collection_modifyitems(config, items):
    """Tests marked `once` (their result does not depend on KERAS_BACKEND) run in one of
    ./run_tests.sh's three lanes: KERAS_DDPM_ONCE names the lane's backend, and each such test
    runs where its `lane` says (`@pytest.mark.once(lane="tensorflow")`; PyTorch's by default;
    tests that start processes of their own go where they balance the lanes). KERAS_DDPM_ONCE=0
    leaves them all out, 1 (or unset: a plain `python -m pytest`) runs them all."""
    lane = os.environ.get("KERAS_DDPM_ONCE", "1")
    if lane == "1":
        return
    left_out = [
        item
        for item in items
        if item.get_closest_marker("once")
        and item.get_closest_marker("once").kwargs.get("lane", ONCE_LANE) != lane
    ]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        skipped = set(left_out)
        items[:] = [item for item in items if item not in skipped]


@pytest.fixture
def tiny_images():
    """32 random 16x16 grayscale images in [-1, 1]."""
    return np.random.default_rng(0).uniform(-1, 1, (32, 16, 16, 1)).astype("float32")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
