"""Checkpoints: atomic files, keep-last-K, complete state (EMA, optimizer, RNG), resume after
SIGKILL."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO
from keras import ops

from keras_ddpm import DiffusionModel
from keras_ddpm import load_model
from keras_ddpm.backend import child_environment
from keras_ddpm.callbacks import MetricsWriter
from keras_ddpm.checkpoints import CheckpointManager
from keras_ddpm.checkpoints import is_complete
from keras_ddpm.cli import cli


def numpy_weights(network):
    return [ops.convert_to_numpy(w) for w in network.weights]


@pytest.mark.once
def test_checkpoints_are_atomic_complete_and_pruned(tmp_path, tiny_images):
    model = DiffusionModel.from_preset("tiny", seed=0)
    model.compile(run_eagerly=True)
    model.fit(tiny_images[:16], batch_size=8, epochs=1, verbose=0)
    manager = CheckpointManager(str(tmp_path), keep=2)
    for step in (2, 4, 6):
        manager.save(model, step)
    assert [s for s, _ in manager.checkpoints()] == [4, 6]
    with open(manager.path_for(6)[:-6] + "x.keras", "wb"):  # not a checkpoint's name
        pass
    # Newer files that a crash or a bad disk left behind are skipped when loading, each with its
    # reason.
    good = open(manager.path_for(6), "rb").read()
    (tmp_path / "ckpt-00000008.keras").write_bytes(good[:5000])  # truncated: no zip directory
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF  # inside model.weights.h5; the zip directory is intact
    (tmp_path / "ckpt-00000010.keras").write_bytes(damaged)
    with (
        zipfile.ZipFile(manager.path_for(6)) as source,
        zipfile.ZipFile(tmp_path / "ckpt-00000012.keras", "w") as archive,
    ):
        for name in ("metadata.json", "config.json"):
            archive.writestr(name, source.read(name))
        archive.writestr("model.weights.h5", b"not HDF5")  # whole zip, weights that do not load
    assert not is_complete(manager.path_for(8)) and not is_complete(manager.path_for(10))
    assert manager.latest() == (12, manager.path_for(12))
    restored, skipped = manager.load_latest(load_model)
    assert restored[:2] == (6, manager.path_for(6))
    reasons = [(os.path.basename(path), reason.split(" (")[0]) for path, reason in skipped]
    assert reasons == [
        ("ckpt-00000012.keras", "it does not load"),
        ("ckpt-00000010.keras", "model.weights.h5 fails its CRC-32 check"),
        ("ckpt-00000008.keras", "it is not a complete zip file"),
    ]

    loaded = restored[2]
    assert int(loaded.optimizer.iterations) == 2
    for a, b in zip(numpy_weights(loaded.ema_network), numpy_weights(model.ema_network)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    # The random stream continues: the seed state is saved (Keras saves no SeedGenerator state).
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded.seed_generator.state),
        ops.convert_to_numpy(model.seed_generator.state),
    )
    assert ops.convert_to_numpy(model.seed_generator.state).sum() > 0

    # A run resumed at step 6 keeps its own newest two when it prunes; the skipped newer files wait
    # to be overwritten. Temporary files go only if their writer has ended: this process, or one
    # that exited.
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    temporaries = {
        pid: tmp_path / f".tmp-{pid}-ckpt-00000014.keras"
        for pid in (os.getpid(), exited.pid, os.getppid())
    }
    for path in temporaries.values():
        path.write_bytes(b"partial")
    manager.prune(6)
    assert [s for s, _ in manager.checkpoints()] == [4, 6, 8, 10, 12]
    # alive: still writing
    assert [pid for pid, path in temporaries.items() if path.exists()] == [os.getppid()]


@pytest.mark.once
def test_metrics_writer_skips_malformed_rows_with_one_warning(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "step,loss,lr,images_per_sec\n2,0.5,0.001,9.0\ngarbage,row\n4,0.4,0.001,9.0,extra\n\x00\x00\x00\n6,0.3,0.001,9.0\n"
    )
    with pytest.warns(UserWarning, match="Skipped 3 malformed row") as record:
        writer = MetricsWriter(str(path), resume_step=4)
    assert len(record) == 1
    writer.write(8, {"loss": 0.2})
    assert [(r["step"], r["loss"]) for r in csv.DictReader(open(path))] == [
        ("2", "0.5"),
        ("8", "0.2"),
    ]


@pytest.mark.once
def test_metrics_writer_merges_rows_and_drops_rows_after_the_resume_step(tmp_path):
    path = str(tmp_path / "metrics.csv")
    writer = MetricsWriter(path)
    for step in (10, 20, 30):
        writer.write(step, {"loss": 0.1 * step, "lr": 1e-3})
    writer.write(30, {"fid": 12.5, "num_generated": 4})
    rows = list(csv.DictReader(open(path)))
    assert (
        [r["step"] for r in rows] == ["10", "20", "30"]
        and rows[2]["fid"] == "12.5"
        and rows[2]["loss"] == "3.0"
    )
    MetricsWriter(path, resume_step=20).write(30, {"loss": 0.25})
    rows = list(csv.DictReader(open(path)))
    assert [(r["step"], r["loss"]) for r in rows] == [("10", "1.0"), ("20", "2.0"), ("30", "0.25")]


def train_command(out, *extra):
    return [
        sys.executable,
        "cli.py",
        "train",
        "--preset",
        "tiny",
        "--steps",
        "12",
        "--batch-size",
        "4",
        "--out",
        out,
        "--checkpoint-every",
        "4",
        "--log-every",
        "2",
        "--sample-every",
        "0",
        "--verbose",
        "0",
        "--seed",
        "3",
        "--ema-decay",
        "0.999",
        *extra,
    ]


@pytest.mark.once
@pytest.mark.slow
def test_resume_after_sigkill_continues_steps_metrics_and_ema(tmp_path):
    out = str(tmp_path / "run")
    env = child_environment(keras.backend.backend())
    process = subprocess.Popen(
        train_command(out, "--cache", "none"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    manager = CheckpointManager(os.path.join(out, "checkpoints"))
    deadline = time.time() + 240
    while manager.latest() is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, output
    killed_at, path = manager.latest()
    assert 4 <= killed_at < 12 and not os.path.exists(os.path.join(out, "model.keras"))
    ema_at_kill = numpy_weights(load_model(path).ema_network)

    # The resume in this process (the CLI's own code, without a second interpreter's start-up).
    result = CliRunner().invoke(cli, ["train", "--out", out, "--resume"])
    assert result.exit_code == 0, result.output
    assert (
        f"resuming from {path} (step {killed_at})" in result.output
        and f"from step {killed_at} to 12" in result.output
    )
    model = load_model(os.path.join(out, "model.keras"))
    assert int(model.optimizer.iterations) == 12  # the same total
    rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    # numbering continues, no duplicates
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    # The EMA went on from the checkpoint's: with decay 0.999 it moved by < 1% of its distance to
    # the trained weights; reset (a fresh copy of the trained weights) it would have jumped the
    # whole way.
    trained_at_kill = numpy_weights(load_model(path).network)
    moved = max(np.abs(a - b).max() for a, b in zip(numpy_weights(model.ema_network), ema_at_kill))
    gap = max(np.abs(a - b).max() for a, b in zip(trained_at_kill, ema_at_kill))
    assert 0 < moved < 0.02 * gap
    config = json.load(open(os.path.join(out, "config.json")))
    assert (
        config["options"]["checkpoint_every"] == 4
        and config["config"]["train"]["train_steps"] == 12
    )
    assert sorted(os.listdir(os.path.join(out, "checkpoints")))[-1] == "ckpt-00000012.keras"
