"""FIDCallback during `fit`: history, metrics.csv, TensorBoard, and `cli.py train --fid-every`."""

import contextlib
import csv
import glob
import importlib.util
import math
import os

import keras
import numpy as np
import pytest
from conftest import compile_for_numbers
from fid_testing import random_fid_inception
from fid_testing import tiny_extractor
from fid_testing import write_images

from keras_ddpm import DiffusionModel
from keras_ddpm import fid
from keras_ddpm.callbacks import FIDCallback
from keras_ddpm.callbacks import SampleGrid
from keras_ddpm.evaluation import EvalConfig


@pytest.fixture
def reference(tiny_images):
    """The tiny extractor and its statistics of 16 'real' images."""
    extractor = tiny_extractor(batch_size=4)
    real = ((tiny_images[:16] + 1) * 127.5).astype(np.uint8)
    return extractor, fid.FeatureStatistics().update(extractor(real))


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """Random FID Inception weights saved to a local file (the --inception-weights path)."""
    path = str(tmp_path_factory.mktemp("inception") / "fid_inception_random.weights.h5")
    random_fid_inception().save_weights(path)
    return path


@pytest.mark.once
@pytest.mark.slow
def test_fid_during_fit_goes_into_history_csv_and_tensorboard(
    reference, inception_weights, tiny_images, tmp_path
):
    extractor, real = reference
    every_epoch = FIDCallback(
        real,
        EvalConfig(num_images=4, steps=2, batch_size=4, kid_subsets=2),
        every_n_epochs=1,
        extractor=extractor,
        csv_path=str(tmp_path / "metrics.csv"),
        log_dir=str(tmp_path / "logs"),
        verbose=0,
    )
    # The default path: the FID Inception built from a weights file and a folder's statistics,
    # both when training begins.
    every_3_steps = FIDCallback(
        write_images(str(tmp_path / "real"), 4),
        EvalConfig(
            num_images=4,
            steps=2,
            batch_size=4,
            kid_subsets=2,
            inception_weights=inception_weights,
            cache_dir=str(tmp_path / "cache"),
        ),
        every_n_steps=3,
        prefix="inception_",
        verbose=0,
    )
    model = DiffusionModel.from_preset("tiny", seed=0)
    model.compile()
    with (
        pytest.warns(UserWarning, match="TensorBoard")
        if importlib.util.find_spec("tensorboard") is None
        else contextlib.nullcontext()
    ):
        history = model.fit(
            tiny_images[:16],
            batch_size=8,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[every_epoch, every_3_steps],
        )

    fids, kids = history.history["fid"], history.history["kid"]
    assert len(fids) == len(kids) == len(history.history["loss"]) == 2
    assert all(np.isfinite(fids)) and all(value > 0 for value in fids) and all(np.isfinite(kids))
    assert [e["step"] for e in every_epoch.evaluations] == [2, 4] and [
        e["epoch"] for e in every_epoch.evaluations
    ] == [1, 2]
    assert [e["num_generated"] for e in every_epoch.evaluations] == [
        4,
        4,
    ] and every_epoch.evaluations[0]["num_real"] == 16
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4] and [
        float(r["fid"]) for r in rows
    ] == pytest.approx(fids)
    if importlib.util.find_spec("tensorboard") is not None:
        assert glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))
    # Steps 1..4, evaluated at 3 (epoch 2); epoch 1 logs NaN. 2048-d Inception features of 4 vs 4
    # images.
    assert [e["step"] for e in every_3_steps.evaluations] == [3]
    assert math.isnan(history.history["inception_fid"][0])
    assert history.history["inception_fid"][1] == every_3_steps.evaluations[0]["fid"] > 0
    assert every_3_steps.extractor.name == fid.weights_name(inception_weights)
    assert (
        every_3_steps.reference.features.shape == (4, 2048)
        and len(os.listdir(tmp_path / "cache")) == 1
    )
    # Same weights and seeds: the same FID (fixed sampling seeds, the EMA weights).
    assert every_epoch.evaluate()["fid"] == pytest.approx(fids[-1], rel=1e-5)


def test_sample_grids_come_every_n_steps_and_at_the_last_step(tiny_images, tmp_path):
    model = compile_for_numbers(DiffusionModel.from_preset("tiny", seed=0))
    grids = SampleGrid(str(tmp_path), every_n_steps=2, num_images=4, steps=2)
    fit = dict(batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[grids])
    model.fit(tiny_images[:24], **fit)  # steps 1-3: the grid of step 2, then of the last step
    assert [os.path.basename(path) for path in grids.paths] == [
        "step_00000002.png",
        "step_00000003.png",
    ]
    model.fit(tiny_images[:8], **fit)  # step 4 ends the run on a multiple: one grid, not two
    assert [os.path.basename(path) for path in grids.paths][2:] == ["step_00000004.png"]
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path) for path in grids.paths]


def test_fid_samples_come_from_the_ema_weights(reference):
    extractor, real = reference
    model = DiffusionModel.from_preset("tiny", seed=0)
    callback = FIDCallback(
        real,
        EvalConfig(num_images=4, steps=2, batch_size=4, kid_subsets=2),
        every_n_steps=1,
        extractor=extractor,
        verbose=0,
    )
    callback.set_model(model)
    before = callback.evaluate()["fid"]
    rng = np.random.default_rng(0)
    for weight in model.network.weights:  # the trained weights change, the EMA ones do not
        weight.assign(rng.normal(0, 0.05, weight.shape).astype("float32"))
    assert callback.evaluate()["fid"] == pytest.approx(before, rel=1e-6)
    for weight, trained in zip(model.ema_network.weights, model.network.weights):
        weight.assign(trained.value)
    assert callback.evaluate()["fid"] != pytest.approx(before, rel=1e-3)


def test_bad_arguments_are_rejected(reference):
    _, real = reference
    with pytest.raises(ValueError, match="exactly one of every_n_steps and every_n_epochs"):
        FIDCallback(real, EvalConfig(num_images=4))
    with pytest.raises(ValueError, match="exactly one"):
        FIDCallback(real, EvalConfig(num_images=4), every_n_steps=1, every_n_epochs=1)
    with pytest.raises(ValueError, match="at least 1"):
        FIDCallback(real, EvalConfig(num_images=4), every_n_steps=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        FIDCallback(real, EvalConfig(num_images=1), every_n_steps=1)


@pytest.mark.once
def test_cli_train_fid_every_wires_a_callback_into_fit(tmp_path, monkeypatch):
    """`train --fid-every 2 --fid-samples 4`: the reference, the callback, driven through Keras'
    hooks.

    `fit` is replaced by a loop that only calls the callbacks and InceptionV3 by the tiny
    extractor (a real `fit` with InceptionV3 from a weights file is tested above), so this
    stays fast.
    """
    from click.testing import CliRunner

    from keras_ddpm.cli import cli

    passed = []

    def hooks_only_fit(self, x, epochs=1, steps_per_epoch=1, callbacks=None, **kwargs):
        passed.extend(callbacks)
        hooks = keras.callbacks.CallbackList(
            callbacks, model=self, add_history=True, epochs=epochs, steps=steps_per_epoch
        )
        hooks.on_train_begin()
        hooks.on_epoch_begin(0)
        for step in range(steps_per_epoch):
            hooks.on_train_batch_end(step, {"loss": 0.5})
        hooks.on_epoch_end(0, {"loss": 0.5})
        hooks.on_train_end()
        return self.history

    weights_asked = []

    def tiny_inception(features="inception-2015", weights=None, resize="clean", batch_size=50):
        weights_asked.append((weights, batch_size))
        return tiny_extractor(batch_size=batch_size)

    monkeypatch.setattr(DiffusionModel, "fit", hooks_only_fit)
    monkeypatch.setattr(fid, "feature_extractor", tiny_inception)
    data = write_images(str(tmp_path / "data"), 8)
    out = tmp_path / "run"
    args = [
        "train",
        "--dataset",
        data,
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--fid-every",
        "2",
        "--fid-samples",
        "4",
        "--fid-steps",
        "2",
    ]
    weights = tmp_path / "weights.h5"  # never read: the extractor is the tiny one
    weights.write_bytes(b"")
    args += ["--inception-weights", str(weights), "--out", str(out), "--verbose", "0"]
    result = CliRunner(env={"KERAS_DDPM_CACHE": str(tmp_path / "cache")}).invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "step 2: FID " in result.output and "(4 generated vs 4 real images)" in result.output
    # beside the run's metrics, checkpoint... callbacks
    (callback,) = [c for c in passed if isinstance(c, FIDCallback)]
    assert (
        isinstance(callback, FIDCallback)
        and callback.every_n_steps == 2
        and callback.evaluation.num_images == 4
        and callback.evaluation.steps == 2
        and callback.evaluation.inception_weights == str(weights)
    )
    assert weights_asked == [(str(weights), 4)]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert (
        len(rows) == 1
        and rows[0]["step"] == "2"
        and rows[0]["num_generated"] == "4"
        and float(rows[0]["fid"]) > 0
    )
    assert len(os.listdir(tmp_path / "cache")) == 1  # the reference statistics, cached
    assert callback.model.history.history["fid"] == [callback.evaluations[0]["fid"]]
