"""Data parallel training on 2 virtual CPU devices gives the step of 1 device (same batch, same
seeds).

TensorFlow: `tf.distribute.MirroredStrategy` over 2 logical CPUs. JAX:
`keras.distribution.DataParallel` over 2 host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=2). Each runs in a subprocess (devices are
fixed when the framework starts), once, from whichever lane of ./run_tests.sh it is given.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from keras_ddpm.backend import child_environment

STEP = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
{setup}
import keras
from keras import ops
from conftest import randomize_weights
from keras_ddpm import DiffusionModel, training

images = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 1)).astype("float32")
labels = np.arange(8, dtype="int32") % 3

def one_step(distribute):
    with training.distribution_scope(distribute):
        model = randomize_weights(DiffusionModel.from_preset("tiny", num_classes=3, seed=7), seed=1)
        # Eagerly on TensorFlow, the mirrored step too (MirroredStrategy.run then calls the step
        # in one thread per device; the same numbers, no trace to wait for: the traced step under
        # a strategy is tests/test_multi_worker.py's).
        model.compile(run_eagerly=keras.backend.backend() == "tensorflow")
        history = model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
        weights = [ops.convert_to_numpy(w) for w in model.network.weights]
        ema = [ops.convert_to_numpy(w) for w in model.ema_network.weights]
    return history.history["loss"][0], weights, ema, training.num_replicas(distribute)

loss_1, weights_1, ema_1, n_1 = one_step("none")
loss_2, weights_2, ema_2, n_2 = one_step({distribute!r})
print(json.dumps({{
    "replicas": [n_1, n_2], "loss": [loss_1, loss_2],
    "weights": max(float(np.abs(a - b).max()) for a, b in zip(weights_1, weights_2)),
    "ema": max(float(np.abs(a - b).max()) for a, b in zip(ema_1, ema_2)),
    "moved": max(float(np.abs(a - b).max()) for a, b in zip(weights_1, ema_1)),
}}))
"""

TF_SETUP = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def run_step(backend, distribute, setup, env=None):
    code = STEP.format(tests=os.path.join(REPO, "tests"), setup=setup, distribute=distribute)
    env = child_environment(backend, **(env or {}))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check(result):
    assert result["replicas"] == [1, 2]
    loss_1, loss_2 = result["loss"]
    assert 0.05 < loss_1 < 10
    # the same t, eps and label dropout per example
    assert loss_2 == pytest.approx(loss_1, rel=1e-5)
    assert result["moved"] > 1e-4  # the step changed the weights (EMA decay 0.9 lags behind)...
    # ...identically (lr 1e-3): averaged, clipped gradients
    assert result["weights"] < 2e-5 and result["ema"] < 2e-5


# Each test runs its backend in a process of its own, so it can run in any lane: where it
# balances them (the JAX lane compiles the most).
@pytest.mark.slow
@pytest.mark.once(lane="tensorflow")
def test_mirrored_strategy_on_2_devices_matches_1_device():
    check(run_step("tensorflow", "mirrored", TF_SETUP))


@pytest.mark.slow
@pytest.mark.once(lane="torch")
def test_jax_data_parallel_on_2_devices_matches_1_device():
    check(
        run_step(
            "jax", "data_parallel", "", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        )
    )
