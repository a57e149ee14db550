"""Optimisation and the training run: LR schedules, clipping, EMA warm-up, mixed precision, NaN
stop, Ctrl-C."""

import csv
import dataclasses
import json
import math
import os
import signal

import keras
import numpy as np
import pytest
from conftest import compile_for_numbers
from conftest import randomize_weights
from keras import ops

from keras_ddpm import DiffusionModel
from keras_ddpm import get_preset
from keras_ddpm import training
from keras_ddpm.callbacks import NonFiniteLossError
from keras_ddpm.optimizers import learning_rate_at
from keras_ddpm.optimizers import make_learning_rate
from keras_ddpm.optimizers import make_optimizer
from keras_ddpm.run_config import RunConfig


def lr_values(schedule, steps):
    return [float(ops.convert_to_numpy(schedule(step))) for step in steps]


def test_learning_rate_schedules():
    train = get_preset("ddpm_cifar10").train  # 2e-4, 5000 warm-up steps, 800k steps
    constant = make_learning_rate(train)
    assert lr_values(constant, [0, 2499, 4999, 5000, 799_999]) == pytest.approx(
        [2e-4 / 5000, 1e-4, 2e-4, 2e-4, 2e-4]
    )
    cosine = make_learning_rate(
        train.__class__(**{**train.__dict__, "lr_schedule": "cosine", "train_steps": 105_000})
    )
    # Warm-up from 0, then 2e-4 * (1 + cos(pi * (step - 5000) / 100000)) / 2.
    expected = [0.0, 1e-4, 2e-4, 2e-4 * (1 + math.cos(math.pi / 4)) / 2, 1e-4, 0.0]
    assert lr_values(cosine, [0, 2500, 5000, 30_000, 55_000, 105_000]) == pytest.approx(
        expected, abs=1e-9
    )
    optimizer = make_optimizer(
        get_preset("tiny").replace(lr_schedule="cosine", warmup_steps=10, train_steps=110).train
    )
    assert learning_rate_at(optimizer, 5) == pytest.approx(5e-4) and learning_rate_at(
        optimizer, 60
    ) == pytest.approx(5e-4)
    assert optimizer.global_clipnorm == 1.0 and isinstance(optimizer, keras.optimizers.Adam)
    adamw = make_optimizer(get_preset("tiny").replace(optimizer="adamw", weight_decay=0.01).train)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 0.01
    with pytest.raises(ValueError, match="needs optimizer='adamw'"):
        get_preset("tiny").replace(weight_decay=0.01)


def one_step_change(images, **overrides):
    """max |w_after - w_before| over the network after one training step."""
    model = randomize_weights(DiffusionModel.from_preset("tiny", seed=0, **overrides), seed=1)
    before = [ops.convert_to_numpy(w) for w in model.network.trainable_weights]
    compile_for_numbers(model)
    model.fit(images, batch_size=16, epochs=1, shuffle=False, verbose=0)
    return max(
        float(np.abs(ops.convert_to_numpy(w) - b).max())
        for w, b in zip(model.network.trainable_weights, before)
    )


def test_gradient_clipping_bounds_the_update(tiny_images):
    # Adam's first step moves a weight by lr * g / (|g| + eps): about lr whatever the scale of g,
    # unless clipping shrinks g far below eps (1e-8): then the step becomes about lr * g / eps <<
    # lr.
    free = one_step_change(tiny_images[:16], grad_clip=0.0)
    clipped = one_step_change(tiny_images[:16], grad_clip=1e-12)
    assert free == pytest.approx(1e-3, rel=0.01)
    assert clipped < 1e-3 * 0.05


def test_a_new_optimizer_after_compile_is_the_one_that_trains(tiny_images):
    # The PyTorch step keeps its optimizer's tensors between steps; compiling again with a new
    # optimizer must move that one's moments and counter.
    model = DiffusionModel.from_preset("tiny", seed=0)
    compile_for_numbers(model)
    model.fit(tiny_images[:8], batch_size=8, epochs=1, verbose=0)
    compile_for_numbers(model, optimizer=make_optimizer(get_preset("tiny").train))
    model.fit(tiny_images[:16], batch_size=8, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 2
    first_momentum = model.optimizer.variables[1]  # the first weight's Adam momentum
    assert (
        "momentum" in first_momentum.path and np.abs(ops.convert_to_numpy(first_momentum)).max() > 0
    )


def test_ema_warmup_copies_first_then_follows_the_formula(tiny_images):
    model = DiffusionModel.from_preset("tiny", seed=0, ema_warmup_power=0.75, ema_decay=0.999)
    decays = [float(ops.convert_to_numpy(model.ema_decay_at(n))) for n in (1, 2, 11, 10**6)]
    assert decays == pytest.approx([0.0, 1 - 2**-0.75, 1 - 11**-0.75, 0.999], abs=1e-6)
    compile_for_numbers(model)
    # decay 0: the EMA is the trained weights
    model.fit(tiny_images[:16], batch_size=16, epochs=1, verbose=0)
    for ema, weight in zip(model.ema_network.weights, model.network.weights):
        np.testing.assert_allclose(
            ops.convert_to_numpy(ema), ops.convert_to_numpy(weight), atol=1e-7
        )


@pytest.mark.parametrize("mode, compute", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_mixed_precision_step_is_finite(mode, compute, tiny_images):
    if keras.backend.backend() == "jax" and mode == "fp16" and jax_on_cpu():
        # XLA's CPU compiler lacks the float16 attention product: refused before training.
        with pytest.raises(ValueError, match=r"^--mixed-precision fp16: JAX .* cannot train in "):
            training.set_mixed_precision(mode)
        assert keras.config.dtype_policy().name == "float32"
        return
    try:
        training.set_mixed_precision(mode)
        model = randomize_weights(DiffusionModel.from_preset("tiny", seed=0), seed=1)
        compile_for_numbers(model)
        history = model.fit(tiny_images[:16], batch_size=8, epochs=1, verbose=0)
    finally:
        training.set_mixed_precision("no")
    assert model.network.get_layer("conv_out").compute_dtype == compute
    assert all(w.dtype == "float32" for w in model.network.weights + model.ema_network.weights)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (mode == "fp16")
    assert 0.05 < history.history["loss"][0] < 10 and int(model.optimizer.iterations) == 2


def jax_on_cpu():
    import jax

    return jax.devices()[0].platform == "cpu"


def dataset_with_nan_at(step, batches, batch_size=8):
    images = (
        np.random.default_rng(0).uniform(-1, 1, (batches * batch_size, 16, 16, 1)).astype("float32")
    )
    images[(step - 1) * batch_size] = np.nan
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size)


@pytest.mark.once
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model = DiffusionModel.from_preset("tiny", seed=0)
    compile_for_numbers(model)
    with pytest.raises(
        NonFiniteLossError,
        match=(
            r"The loss became nan by step 3.*last good checkpoint is .*ckpt-00000002\.keras "
            r"\(step 2\)"
        ),
    ):
        config = RunConfig(
            steps=6,
            out_dir=str(tmp_path),
            checkpoint_every=2,
            log_every=1,
            sample_every=0,
            verbose=0,
        )
        training.fit(model, dataset_with_nan_at(3, 6), config)
    assert os.listdir(tmp_path / "checkpoints") == ["ckpt-00000002.keras"]
    with open(tmp_path / "metrics.csv") as f:
        # step 3 raised: no NaN row
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2]


class SignalAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.at = step

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.once
def test_an_ignored_sigint_stays_ignored_and_sigterm_is_handled():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with training.GracefulInterrupt(model=None) as interrupt:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == interrupt._handle
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.once
def test_ctrl_c_stops_after_the_step_and_saves_a_checkpoint(tmp_path, tiny_images, capsys):
    model = DiffusionModel.from_preset("tiny", seed=0)
    compile_for_numbers(model)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # SIG_IGN in a background job
    try:
        config = RunConfig(
            steps=20,
            out_dir=str(tmp_path),
            checkpoint_every=10,
            log_every=2,
            sample_every=1000,  # no grid of the last step after a Ctrl-C
            sample_steps=2,
            batch_size=8,
        )
        result = training.fit(model, tiny_images, config, callbacks=[SignalAt(3)])
        # our handler is removed again
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert (
        result.interrupted
        and result.step == 3
        and result.checkpoint.endswith("ckpt-00000003.keras")
    )
    assert os.listdir(tmp_path / "checkpoints") == ["ckpt-00000003.keras"]
    assert not os.path.exists(tmp_path / "samples")
    output = capsys.readouterr().out
    assert (
        "SIGINT: stopping after this step" in output and "step 3/20" in output and "img/s" in output
    )
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 3] and all(
        float(r["lr"]) == pytest.approx(1e-3) for r in rows
    )


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="`run` is backend-neutral and test_cli trains through it on every backend; here one "
    "backend trains twice (the quickest)",
)
def test_run_trains_saves_and_resumes_what_its_config_describes(tmp_path):
    out = str(tmp_path / "run")
    config = RunConfig(
        preset="tiny",
        steps=1,
        batch_size=4,
        out_dir=out,
        checkpoint_every=1,
        log_every=1,
        sample_every=0,
        verbose=0,
        cache="none",
        seed=2,
    )
    messages = []

    def echo(message, err=False):
        messages.append((message, err))

    result = training.run(config, echo=echo)
    assert not result.interrupted and result.step == result.total_steps == 1
    assert result.model_path == os.path.join(out, "model.keras")
    assert os.path.isfile(result.model_path)
    assert np.isfinite(result.final_loss)
    parameters = result.model.network.count_params()
    started = f"training tiny ({parameters:,} parameters) on mnist_5k from step 0 to 1"
    # 1 step against the tiny preset's EMA horizon of 1 / (1 - 0.9) = 10: warned, on stderr, first
    short = "warning: --steps 1 is shorter than 3 EMA horizons (3 x 10 steps at --ema-decay 0.9)"
    assert len(messages) == 2 and messages[0][0].startswith(short) and messages[0][1]
    assert messages[1] == (started, False)
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    assert saved["options"] == config.options() and saved["config"]["train"]["train_steps"] == 1
    assert saved["backend"] == keras.backend.backend() and saved["seed"] == 2

    # Resumed with only a new total: the other options come from config.json, the weights and
    # the step from the newest checkpoint.
    messages.clear()
    resumed = training.run(RunConfig(out_dir=out, resume=True, steps=2), echo=echo)
    checkpoint = os.path.join(out, "checkpoints", "ckpt-00000001.keras")
    assert messages[1] == (f"resuming from {checkpoint} (step 1)", False)
    assert resumed.step == 2 and int(resumed.model.optimizer.iterations) == 2
    assert resumed.model.config.train.batch_size == 4
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["options"] == dataclasses.replace(config, steps=2).options()
    with pytest.raises(ValueError, match="already holds checkpoints: pass --resume"):
        training.run(config, echo=echo)


def test_gradient_accumulation_is_the_update_of_the_whole_batch(tiny_images):
    # DDPM's batch 128 on a small GPU: --grad-accum K averages K micro-batches' gradients before
    # the one clipping, Adam and EMA step, with t, eps and the label dropout drawn for the whole
    # batch, so two steps equal those of the unsplit batch (the tiny preset has no dropout).
    images, num_classes = tiny_images[:16], 3
    labels = np.arange(16, dtype="int32") % 3

    def two_steps(grad_accum, **compile_options):
        model = DiffusionModel.from_preset(
            "tiny", seed=3, num_classes=num_classes, grad_accum=grad_accum
        )
        model = randomize_weights(model, seed=1)
        model.compile(**compile_options)
        history = model.fit(images, labels, batch_size=8, epochs=1, shuffle=False, verbose=0)
        weights = [ops.convert_to_numpy(w) for w in model.network.weights]
        ema = [ops.convert_to_numpy(w) for w in model.ema_network.weights]
        return history.history["loss"][0], weights, ema, int(model.optimizer.iterations)

    # Eager on TensorFlow (its tf.while_loop then runs as a Python loop; tracing it costs ~50 s),
    # compiled on JAX (the lax.fori_loop); PyTorch's loop is Python's.
    eager = keras.backend.backend() != "jax"
    whole = two_steps(1, run_eagerly=eager)
    split = two_steps(4, run_eagerly=eager)
    assert whole[3] == split[3] == 2  # one optimizer step a batch of 8, not one a micro-batch
    assert split[0] == pytest.approx(whole[0], rel=1e-5)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(whole[1], whole[2]))
    assert moved > 1e-4  # the steps changed the weights, and the EMA lags behind them
    for name, got, want in (("weights", split[1], whole[1]), ("ema", split[2], whole[2])):
        error = max(float(np.abs(a - b).max()) for a, b in zip(got, want))
        assert error < 2e-5, name


def test_grad_accum_must_divide_the_batch():
    with pytest.raises(ValueError, match="does not split into 3 equal micro-batches"):
        get_preset("tiny").replace(batch_size=16, grad_accum=3)
