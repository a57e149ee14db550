"""`python cli.py train --distribute multi_worker` in 2 real worker processes on 127.0.0.1.

Each backend's engine: TensorFlow's MultiWorkerMirroredStrategy (TF_CONFIG), JAX's
`keras.distribution.initialize` + `DataParallel` (KERAS_DISTRIBUTION_*), PyTorch's
torch.distributed over gloo (torchrun's RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, set here as
torchrun sets them). Two workers trained for 2 steps end with the weights, EMA and optimizer state
of one process trained on the same global batches (under the lane's own KERAS_BACKEND: that
process is this one); only the chief writes; a killed worker stops the other with its name (each
backend's workers, launched from any lane); a missing or inconsistent launcher environment is one
`Error:` line.
"""

import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO

from keras_ddpm import backend
from keras_ddpm import training
from keras_ddpm.backend import child_environment
from keras_ddpm.cli import cli
from keras_ddpm.run_config import RunConfig

BACKEND = keras.backend.backend()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BACKEND not in ("tensorflow", "jax", "torch"), reason="a backend of keras_ddpm"
    ),
]
# The smallest run: the tiny preset at 8x8, a global batch of 8 (4 a worker), 2 steps.
RUN = dict(
    preset="tiny", image_size=8, batch_size=8, steps=2, seed=3, log_every=1, checkpoint_every=1
)
# KERAS_DDPM_WORKER_TIMEOUT of the lost-worker run, in seconds: longer than one worker may lag
# the other into the first collective while both trace their step on a loaded machine (5 s was
# not, once). The other run waits longer, while the chief samples its grid alone (and this
# process trains the one-process run beside it).
WORKER_TIMEOUT = "20"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_environment(index, count, ports, framework=BACKEND):
    """What `framework`'s launcher sets for worker `index` of `count`."""
    return backend.launcher_environment(framework, index, count, ports)


def cli_options(**options):
    args = []
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def launch(tmp_path, out, count=2, timeout=WORKER_TIMEOUT, framework=BACKEND, **options):
    """`count` worker processes of `train --distribute multi_worker` on `framework`; their output
    goes to tmp_path/worker-<i>.log."""
    ports = [free_port() for _ in range(count)]
    args = ["train", "--distribute", "multi_worker", "--out", str(out), *cli_options(**options)]
    processes = []
    for index in range(count):
        env = child_environment(
            framework,
            KERAS_DDPM_WORKER_TIMEOUT=timeout,
            **launcher_environment(index, count, ports, framework),
        )
        log = open(tmp_path / f"worker-{index}.log", "w")
        processes.append(
            subprocess.Popen(
                [sys.executable, "cli.py", *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()
    return processes


def stop(processes):
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def read_log(tmp_path, index):
    return (tmp_path / f"worker-{index}.log").read_text(errors="replace")


def saved_arrays(path):
    """Every array of a `.keras` file's weights (network, EMA, optimizer state), by h5 path."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
            weights.visititems(
                lambda name, item: (
                    arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
                )
            )
    return arrays


def files_under(folder):
    return sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
    )


def assert_one_error_line(result, pattern):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.output


def launcher_problems(tmp_path, monkeypatch):
    """No launcher environment, a process id beyond the count, a batch that 2 processes cannot
    split: one `Error:` line each, before any worker is joined."""
    variables = list(launcher_environment(0, 2, [1, 2])) + ["TF_CONFIG"]
    for name in variables:
        monkeypatch.delenv(name, raising=False)
    args = ["train", "--distribute", "multi_worker", *cli_options(**RUN)]
    missing = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "missing")])
    assert_one_error_line(missing, r"--distribute multi_worker on \w+ needs .* not set\.$")
    beyond = {**launcher_environment(0, 2, [1, 2]), **launcher_environment(2, 2, [1, 2])}
    if BACKEND == "tensorflow":  # a task index past the cluster's 2 workers
        beyond["TF_CONFIG"] = beyond["TF_CONFIG"].replace('"index": 0', '"index": 2')
    mismatched = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "m")], env=beyond)
    assert_one_error_line(mismatched, r"(do not describe a process|names task worker:2)")
    uneven = CliRunner().invoke(
        cli,
        [*args, "--batch-size", "7", "--out", str(tmp_path / "uneven")],
        env=launcher_environment(0, 2, [1, 2]),
    )
    assert_one_error_line(uneven, r"The batch size 7 does not split evenly across 2 processes\.$")
    assert not any((tmp_path / name).exists() for name in ("missing", "m", "uneven"))


def test_two_workers_train_as_one_process_and_only_the_chief_writes(tmp_path, monkeypatch):
    launcher_problems(tmp_path, monkeypatch)
    out = tmp_path / "two"
    processes = launch(tmp_path, out, timeout="240", sample_every=2, sample_steps=1, **RUN)
    try:
        # Meanwhile, one process on the same global batches (in this one: no startup to wait for).
        single = tmp_path / "one"
        training.run(RunConfig(out_dir=str(single), sample_every=0, verbose=0, **RUN))
        codes = [process.wait(timeout=300) for process in processes]
    finally:
        stop(processes)
    assert codes == [0, 0], read_log(tmp_path, 0)[-3000:] + read_log(tmp_path, 1)[-3000:]
    assert "model saved to" in read_log(tmp_path, 0)
    assert "the chief saves" in read_log(tmp_path, 1)

    two, one = saved_arrays(out / "model.keras"), saved_arrays(single / "model.keras")
    assert sorted(two) == sorted(one)
    assert any("ema_network" in name for name in two) and any("optimizer" in name for name in two)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=2e-6, err_msg=name)
    first = saved_arrays(out / "checkpoints" / "ckpt-00000001.keras")
    assert max(np.abs(first[n] - two[n]).max() for n in two if "network" in n) > 1e-5  # trained

    # Only the chief wrote: one of each file, one TensorBoard log, one row a step, its lock.
    files = files_under(out)
    events = [name for name in files if name.startswith("logs" + os.sep + "events.")]
    assert len(events) == 1, files
    expected = [
        "checkpoints/ckpt-00000001.keras",
        "checkpoints/ckpt-00000002.keras",
        "config.json",
        "metrics.csv",
        "model.keras",
        "train.lock",
    ]
    grids = [name for name in files if name.startswith("samples" + os.sep)]
    assert os.path.join("samples", "step_00000002.png") in grids, files
    assert [name for name in files if name not in events + grids] == [
        os.path.normpath(name) for name in expected
    ]
    with open(out / "metrics.csv") as f:
        assert [row["step"] for row in csv.DictReader(f)] == ["1", "2"]
    assert (out / "train.lock").read_text() == str(processes[0].pid)


# Only worker processes here, so each backend's run goes to the lane that balances
# ./run_tests.sh (the JAX lane compiles the most).
@pytest.mark.parametrize(
    "framework",
    [
        pytest.param("tensorflow", marks=pytest.mark.once(lane="tensorflow")),
        pytest.param("torch", marks=pytest.mark.once(lane="torch")),
        pytest.param("jax", marks=pytest.mark.once(lane="torch")),
    ],
)
def test_a_lost_worker_stops_the_other_with_its_name(tmp_path, framework):
    out = tmp_path / "lost"
    options = {**RUN, "steps": 100_000, "checkpoint_every": 100_000, "sample_every": 0}
    processes = launch(tmp_path, out, framework=framework, **options)
    try:
        # Worker 1 is lost once both have joined and built the model (before it compiles its
        # step: that would be time spent for nothing); the chief's first step needs it.
        deadline = time.monotonic() + 240
        while "training from step" not in read_log(tmp_path, 1):
            assert time.monotonic() < deadline and processes[1].poll() is None, read_log(
                tmp_path, 1
            )[-3000:]
            time.sleep(0.2)
        os.killpg(processes[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        code = processes[0].wait(timeout=120)
        waited = time.monotonic() - killed
    finally:
        stop(processes)
    log = read_log(tmp_path, 0)
    assert code == 1, log[-3000:]  # its own exit, not JAX's abort at a shutdown barrier
    errors = [line for line in log.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
    assert re.search(r"[Ll]ost worker.* 1\b", errors[0]), errors[0]
    assert waited < 90
