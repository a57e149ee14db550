"""`train --resume` and `export RUN` on damaged, incomplete, foreign or busy run directories (the
CLI in-process).

No test here trains: the run directory is written once, as `train --preset tiny --steps 2
--checkpoint-every 1` leaves it when killed before its final save, and each test resumes it
at a step it has reached already, so `train` stops before the first batch.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import keras
import pytest
from click.testing import CliRunner

from keras_ddpm import DiffusionModel
from keras_ddpm.callbacks import MetricsWriter
from keras_ddpm.checkpoints import LOCK_NAME
from keras_ddpm.checkpoints import CheckpointManager
from keras_ddpm.checkpoints import RunLock
from keras_ddpm.checkpoints import is_complete
from keras_ddpm.cli import cli

pytestmark = pytest.mark.once  # run-directory machinery, backend-free

OPTIONS = {
    "preset": "tiny",
    "steps": 2,
    "batch_size": 2,
    "checkpoint_every": 1,
    "log_every": 1,
    "sample_every": 0,
    "verbose": 0,
    "cache": "none",
}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """config.json, metrics.csv and checkpoints of steps 1 and 2; no model.keras."""
    out = tmp_path_factory.mktemp("killed_run")
    model = DiffusionModel.from_preset("tiny", seed=0, batch_size=2, train_steps=2)
    model.compile(jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    manager = CheckpointManager(str(out / "checkpoints"))
    writer = MetricsWriter(str(out / "metrics.csv"))
    for step in (1, 2):
        model.optimizer.iterations.assign(step)
        manager.save(model, step)
        writer.write(step, {"loss": 1.0 / step})
    options = {
        "dataset": "mnist_5k",
        "seed": 0,
        "backend": keras.backend.backend(),
        "config": model.config.to_dict(),
        "options": OPTIONS,
    }
    (out / "config.json").write_text(json.dumps(options))
    return out


@pytest.fixture
def run(killed_run, tmp_path):
    """A fresh copy of `killed_run` for one test to damage."""
    return shutil.copytree(killed_run, tmp_path / "run")


def snapshot(directory):
    """{relative path: bytes} of every file under `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, directory)] = open(path, "rb").read()
    return files


def test_resume_skips_a_checkpoint_damaged_inside_and_loads_the_next_older(run):
    newest = str(run / "checkpoints" / "ckpt-00000002.keras")
    data = bytearray(open(newest, "rb").read())
    data[len(data) // 2] ^= 0xFF  # inside model.weights.h5; the zip directory at the end is intact
    open(newest, "wb").write(data)
    assert not is_complete(newest)

    # step 1 is reached: nothing trains
    result = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--steps", "1"])
    assert result.exit_code == 0, result.output
    assert f"skipped {newest}: model.weights.h5 fails its CRC-32 check" in result.output
    assert f"resuming from {run / 'checkpoints' / 'ckpt-00000001.keras'} (step 1)" in result.output
    assert "already trained to step 1" in result.output and is_complete(str(run / "model.keras"))
    assert os.path.exists(newest)  # left in place: the run overwrites it when it gets to step 2


def test_a_failed_final_save_leaves_no_model_keras_and_export_falls_back_to_a_good_checkpoint(
    run, tmp_path, monkeypatch
):
    save = DiffusionModel.save

    def save_then_fail_in_the_final_write(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        if os.path.basename(filepath).endswith("model.keras"):
            with open(filepath, "r+b") as f:
                f.truncate(5000)  # what a kill in the middle of writing leaves
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(DiffusionModel, "save", save_then_fail_in_the_final_write)
    result = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume"])
    monkeypatch.undo()
    assert result.exit_code != 0, result.output
    # neither a broken model.keras nor a temporary file
    assert not [name for name in os.listdir(run) if "model.keras" in name]

    # A model.keras broken otherwise (a version that wrote it in place, a bad copy): export skips
    # it.
    final = str(run / "model.keras")
    with open(final, "wb") as f:
        f.write(open(run / "checkpoints" / "ckpt-00000002.keras", "rb").read()[:5000])
    output = tmp_path / "exported.keras"
    result = CliRunner().invoke(cli, ["export", str(run), str(output)])
    assert result.exit_code == 0, result.output
    assert f"skipped {final}: it is not a complete zip file" in result.output
    assert "(trained 2 steps)" in result.output and result.output.rstrip().endswith(
        f"from {run / 'checkpoints' / 'ckpt-00000002.keras'}"
    )
    assert is_complete(str(output))


@pytest.mark.skipif(
    os.name != "posix", reason="run directories are locked with fcntl, which Windows lacks"
)
def test_a_second_trainer_exits_naming_the_lock_holder_and_a_killed_holder_leaves_no_lock(run):
    # The first trainer, reduced to what matters here: it holds the lock as `RunLock` takes it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); "
            "print(flush=True); time.sleep(300)",
            str(run / LOCK_NAME),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        holder.stdout.readline()  # it holds the lock
        before = snapshot(run)
        result = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume"])
        assert result.exit_code == 1, result.output
        assert (
            result.output
            == f"Error: {run} is in use by another trainer (pid {holder.pid}); wait for it to end "
            "or use another run directory.\n"
        )
        # it wrote nothing: no config.json, metrics or checkpoint of its own
        assert snapshot(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock(str(run)):  # the OS released the killed holder's lock
        pass


@pytest.mark.parametrize(
    "config_json, message",
    [
        (
            None,
            "--resume needs {config}, which holds the options of the run to continue, and there "
            "is none",
        ),
        (
            "[]",
            '{config} must be a JSON object whose "options" is an object, as `train` writes it. '
            "Received: list",
        ),
        (
            '{"options": "tiny"}',
            '{config} must be a JSON object whose "options" is an object, as `train` writes it. '
            "Received: str",
        ),
        (
            '{"options": {"batch_size": "many"}}',
            "{config} holds an invalid option batch_size='many'",
        ),
        ('{"options": {"dataset": 5}}', "{config} holds an invalid option dataset=5"),
        ("{", "{config} is not valid JSON"),
    ],
    ids=[
        "no config.json",
        "a list",
        "options a string",
        "batch_size a string",
        "dataset a number",
        "not JSON",
    ],
)
def test_resume_refuses_a_run_directory_without_a_usable_config_json(run, config_json, message):
    config = run / "config.json"
    if config_json is None:
        config.unlink()
    else:
        config.write_text(config_json)
    before = snapshot(run)
    # --steps 2 keeps short the run that would start if the directory were not refused.
    result = CliRunner().invoke(
        cli, ["train", "--out", str(run), "--resume", "--steps", "2", "--verbose", "0"]
    )
    assert result.exit_code == 1, result.output
    assert (
        result.output.startswith("Error: " + message.format(config=config))
        and result.output.count("\n") == 1
    ), result.output
    assert snapshot(run) == before  # nothing written: config.json is not replaced by the defaults


def test_resume_refuses_a_directory_that_holds_no_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for directory in (empty, tmp_path / "missing"):
        result = CliRunner().invoke(
            cli, ["train", "--out", str(directory), "--resume", "--steps", "2", "--verbose", "0"]
        )
        assert result.exit_code == 1, result.output
        assert result.output.startswith(f"Error: --resume needs {directory / 'config.json'}"), (
            result.output
        )
    assert os.listdir(empty) == [] and not os.path.exists(tmp_path / "missing")
