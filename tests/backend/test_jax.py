"""The JAX backend's own train function (`keras_ddpm.backend.jax.make_train_function`): N steps
per compiled call (`steps_per_execution`), the state carried between calls in one flat buffer per
dtype, and the same numbers as Keras' own train function taking one step a call."""

import csv
import os

import jax
import keras
import numpy as np
import pytest

from keras_ddpm import DiffusionModel
from keras_ddpm import training
from keras_ddpm.diffusion_model import load_model
from keras_ddpm.run_config import RunConfig

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX backend only")

BATCH = 2
SNAPSHOT_STEPS = (2, 4, 5)
STATE = 300  # the arrays of Keras' four state lists for `tiny_model`


def images(batches):
    return np.random.default_rng(0).uniform(-1, 1, (batches * BATCH, 16, 16, 1)).astype("float32")


def tiny_model(steps_per_execution):
    # The tiny preset cut to one level without attention: about half its arrays (300 state
    # arrays in place of 580), so each of the programs below compiles faster.
    keras.utils.set_random_seed(0)
    model = DiffusionModel.from_preset(
        "tiny", seed=0, channel_multipliers=(1,), attention_resolutions=()
    )
    model.compile(steps_per_execution=steps_per_execution)
    return model


def state_of(model):
    """Copies of the weights (trained and EMA), the seed states, Adam's slots and iterations."""
    variables = model.trainable_variables + model.non_trainable_variables
    return [np.array(v.numpy()) for v in variables + list(model.optimizer.variables)]


class Recorder(keras.callbacks.Callback):
    """Each `on_train_batch_end`'s batch index and loss; the model's state after `snapshots`
    steps (reading `self.model` syncs Keras' JAX state, as a checkpoint does)."""

    def __init__(self, snapshots=()):
        super().__init__()
        self.snapshots = snapshots
        self.losses, self.states = {}, {}

    def on_train_batch_end(self, batch, logs=None):
        self.losses[batch + 1] = float(logs["loss"])
        if batch + 1 in self.snapshots:
            self.states[batch + 1] = state_of(self.model)


def count_calls(model):
    """Wraps the jitted function the train function runs: its calls, and the arrays (pytree
    leaves) passed to each; None where Keras' own train function runs (its own count then)."""
    model.make_train_function()
    function = model.train_function
    calls = []
    if getattr(function, "compiled", None) is None:  # Keras' own: one jitted step a call

        def keras_counting(state, iterator):
            data = next(iterator)
            calls.append(len(jax.tree_util.tree_leaves((state, data))))
            return function(state, iter([data]))

        model.train_function = keras_counting
        return calls
    compiled = function.compiled

    def counting(*args):
        calls.append(len(jax.tree_util.tree_leaves(args)))
        return compiled(*args)

    function.compiled = counting
    return calls


def fit(model, batches, snapshots=()):
    recorder = Recorder(snapshots)
    calls = count_calls(model)
    history = model.fit(
        images(batches), batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[recorder]
    )
    return recorder, calls, history


def assert_same(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def single_steps():
    """Keras' own train function, one step a call, state unpacked (the default): the reference."""
    model = tiny_model(1)
    recorder, calls, history = fit(model, 5, SNAPSHOT_STEPS)
    return model, recorder, calls, history


def test_reference_is_keras_own_train_function(single_steps):
    model, recorder, calls, _ = single_steps
    trainable = len(model.trainable_variables)
    state = trainable + len(model.non_trainable_variables) + len(model.optimizer.variables) + 2
    assert calls == [state + 1] * 5  # every state array and the batch, each call
    assert state == STATE  # weights, EMA, seed states, Adam, loss mean
    assert model.optimizer.iterations.numpy() == 5


def test_two_steps_per_call_give_the_numbers_of_single_steps(single_steps, tmp_path):
    import tensorflow as tf

    _, reference, _, reference_history = single_steps
    model = tiny_model(2)
    recorder, calls = Recorder(snapshots=(2, 4)), count_calls(model)
    config = RunConfig(
        steps=4, out_dir=str(tmp_path), checkpoint_every=2, log_every=2, sample_every=0, verbose=0
    )
    dataset = tf.data.Dataset.from_tensor_slices(images(4)).batch(BATCH).repeat()
    result = training.fit(model, dataset, config, callbacks=[recorder])
    history = result.history
    assert result.step == 4 and len(calls) == 2  # 4 steps, 2 compiled calls
    assert calls == [STATE + 2] * 2  # Keras' state lists and the 2 batches (stacked in the call)
    assert model.optimizer.iterations.numpy() == 4
    assert sorted(recorder.losses) == [2, 4]  # one on_train_batch_end per call
    for step in (2, 4):
        np.testing.assert_allclose(recorder.losses[step], reference.losses[step], rtol=1e-5)
        assert_same(recorder.states[step], reference.states[step])
    assert_same(state_of(model), reference.states[4])
    np.testing.assert_allclose(history.history["loss"], [reference.losses[4]], rtol=1e-5)
    assert reference_history.history["loss"] == [reference.losses[5]]
    # The checkpoints written after each call hold that call's weights, EMA and Adam state.
    for step in (2, 4):
        saved = load_model(os.path.join(str(tmp_path), "checkpoints", f"ckpt-{step:08d}.keras"))
        assert_same(state_of(saved), reference.states[step])
    with open(os.path.join(str(tmp_path), "metrics.csv")) as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [2, 4]


def test_steps_per_execution_must_divide_the_callbacks_intervals():
    config = RunConfig(log_every=8, checkpoint_every=12, sample_every=0)
    training._check_steps_per_execution(config, 4, 16)
    message = (
        r"^--steps-per-execution 8 must divide the steps left to train 12, --checkpoint-every 12: "
        r"callbacks run once per call of that many steps\.$"
    )
    with pytest.raises(ValueError, match=message):
        training._check_steps_per_execution(config, 8, 12)


def test_packed_state_crosses_the_host_boundary_as_few_arrays(single_steps, monkeypatch):
    # The state packed into one flat buffer per dtype (float32, int32, uint32) between calls,
    # read mid-fit (a callback asking for `model` unpacks it; the next call packs it again), and
    # a short last group: 5 steps as 2 + 2 + 1.
    from keras_ddpm.backend import jax as backend_jax

    monkeypatch.setattr(backend_jax, "PACK_STATE", True)
    monkeypatch.setattr(backend_jax, "SCAN_UNROLL", 1)  # a loop on the device (a CPU unrolls)
    _, reference, reference_calls, _ = single_steps
    model = tiny_model(2)
    recorder, calls, _ = fit(model, 5, snapshots=(2, 4))
    assert reference_calls[0] == STATE + 1 and calls == [3 + 2, 3 + 2, 3 + 1]
    assert model.optimizer.iterations.numpy() == 5
    for step in (2, 4):
        np.testing.assert_allclose(recorder.losses[step], reference.losses[step], rtol=1e-5)
        assert_same(recorder.states[step], reference.states[step])
    # Keras numbers the short group's end as a whole one's (batch 6, as on TensorFlow).
    np.testing.assert_allclose(recorder.losses[6], reference.losses[5], rtol=1e-5)
    assert_same(state_of(model), reference.states[5])


def test_a_failed_gloo_collective_is_a_lost_worker_in_a_step_or_before_the_first():
    # A step's all-reduce raises JaxRuntimeError; the all-gather with which `jax.device_put`
    # checks the first batch raises ValueError (tests/test_multi_worker.py loses a worker there).
    from keras_ddpm.backend import jax as backend_jax

    reset = "Read error [127.0.0.1]:5015: Connection reset by peer"
    for error in (
        jax.errors.JaxRuntimeError(f"UNKNOWN: Gloo all-reduce failed: {reset}"),
        ValueError(f"UNKNOWN: Gloo AllGather failed: {reset}"),
    ):
        message = backend_jax.lost_worker_message(error)
        assert message.startswith("Lost worker") and message.endswith(f"{reset}).")
    assert backend_jax.lost_worker_message(ValueError("The batch size 7 does not split")) is None
    assert backend_jax.lost_worker_message(RuntimeError(f"Gloo {reset}")) is None
