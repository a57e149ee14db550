"""A training run that survives real use: checkpoints and resume, metrics, samples, Ctrl-C, NaN stop.

    with training.distribution_scope("mirrored"):       # or "data_parallel" (JAX), "none"
        model = DiffusionModel(config); model.compile()
        result = training.fit(model, dataset, total_steps=800_000, out_dir="runs/cifar10")

`fit` is Keras' `model.fit` with the run's callbacks: `Checkpoint` (atomic, every N steps,
keep K), `MetricsLogger` (OUT/metrics.csv and TensorBoard under OUT/logs), `SampleGrid`
(OUT/samples) and a progress bar; it continues from `model.optimizer.iterations`, so
a model loaded from a checkpoint trains on to the same `total_steps`.
"""

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time

import keras

from keras_ddpm import backend
from keras_ddpm.callbacks import MetricsLogger
from keras_ddpm.callbacks import MetricsWriter
from keras_ddpm.callbacks import NonFiniteLossError
from keras_ddpm.callbacks import SampleGrid
from keras_ddpm.callbacks import StepCallback
from keras_ddpm.checkpoints import Checkpoint
from keras_ddpm.checkpoints import CheckpointManager
from keras_ddpm.checkpoints import RunLock

MIXED_PRECISION = {"no": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
DISTRIBUTIONS = {"none": None, "mirrored": "tensorflow", "data_parallel": "jax"}


def set_mixed_precision(mode):
    """Sets Keras' global dtype policy: "no" (float32), "bf16" or "fp16" ("mixed_float16" gets loss scaling).

    Call before building the model. Variables (and so EMA weights and optimizer state) stay
    float32; `DiffusionModel` keeps the schedule math and the loss in float32. Raises ValueError
    where the backend cannot compute in that dtype on this machine (`backend.compute_dtype_problem`).
    """
    if mode not in MIXED_PRECISION:
        raise ValueError(f"mixed precision must be one of {tuple(MIXED_PRECISION)}. Received: {mode!r}")
    policy = keras.DTypePolicy(MIXED_PRECISION[mode])
    problem = backend.compute_dtype_problem(policy.compute_dtype)
    if problem:
        raise ValueError(f"--mixed-precision {mode}: {problem}")
    keras.config.set_dtype_policy(policy)


def num_replicas(distribute):
    """How many devices `distribution_scope(distribute)` splits each batch across."""
    if distribute == "mirrored":
        import tensorflow as tf

        return len(tf.config.list_logical_devices("GPU")) or len(tf.config.list_logical_devices("CPU"))
    if distribute == "data_parallel":
        return len(keras.distribution.list_devices())
    return 1


@contextlib.contextmanager
def distribution_scope(distribute="none"):
    """Builds, compiles and fits inside this scope to split every global batch across the local devices.

    "mirrored": `tf.distribute.MirroredStrategy` (TensorFlow backend: all GPUs, or all logical
    CPUs). "data_parallel": `keras.distribution.DataParallel` (JAX backend). For several
    machines, see the README (MultiWorkerMirroredStrategy / `keras.distribution.initialize`).
    """
    if distribute not in DISTRIBUTIONS:
        raise ValueError(f"distribute must be one of {tuple(DISTRIBUTIONS)}. Received: {distribute!r}")
    backend = DISTRIBUTIONS[distribute]
    if backend and keras.backend.backend() != backend:
        raise ValueError(f"--distribute {distribute} needs the {backend} backend (KERAS_BACKEND={backend}).")
    if distribute == "mirrored":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or [d.name for d in tf.config.list_logical_devices("CPU")]
        with tf.distribute.MirroredStrategy(devices).scope():
            yield
    elif distribute == "data_parallel":
        with keras.distribution.DataParallel(devices=keras.distribution.list_devices()).scope():
            yield
    else:
        yield


class ProgressBar(StepCallback):
    """One console line: step / total, a bar, loss, images/s and ETA (refreshed at most every `interval` s).

    Keras' `Progbar` estimates the ETA from step 0, so it is wrong for a resumed run.
    """

    def __init__(self, total_steps, batch_size, interval=0.5, stream=None):
        super().__init__()
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.interval = interval
        self.stream = stream or sys.stdout

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._first = None  # (step, time) after the first batch: compilation is not counted
        self._printed, self._printed_step, self._last = 0.0, None, None

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        now = time.perf_counter()
        if self._first is None:
            self._first = (self.step, now)
        self._last = (float(logs["loss"]), now)
        if now - self._printed >= self.interval or self.step >= self.total_steps:
            self._write()

    def _write(self):
        loss, now = self._last
        self._printed, self._printed_step = now, self.step
        self.stream.write(self.line(loss, now) + ("\r" if self.stream.isatty() else "\n"))
        self.stream.flush()

    def line(self, loss, now):
        done = self.step / self.total_steps
        bar = "=" * int(20 * done) + ">" + "." * (20 - int(20 * done))
        text = f"step {self.step}/{self.total_steps} [{bar[:21]}] {100 * done:3.0f}% loss {loss:.4f}"
        first_step, first_time = self._first
        if self.step > first_step:
            rate = (self.step - first_step) / (now - first_time)
            eta = int((self.total_steps - self.step) / rate)
            text += f" {rate * self.batch_size:.1f} img/s ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"
        return text

    def on_train_end(self, logs=None):
        if self._last is not None and self._printed_step != self.step:  # the step it stopped at
            self._write()
        self.stream.write("\n")


class GracefulInterrupt:
    """The first Ctrl-C (SIGINT) or SIGTERM stops training after the current step (a checkpoint is
    then saved); a second one interrupts at once. Only in the main thread. A SIGINT the process
    ignores (a shell's background job, `nohup`) stays ignored; SIGTERM still stops such a run."""

    def __init__(self, model):
        self.model = model
        self.signals = 0
        self._previous = {}

    def _handle(self, signum, frame):
        self.signals += 1
        if self.signals > 1:
            raise KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint (again to quit now)", flush=True)
        self.model.stop_training = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


@dataclasses.dataclass
class TrainResult:
    step: int  # the global step reached
    interrupted: bool
    history: object
    checkpoint: str  # the newest checkpoint's path


def fit(
    model,
    dataset,
    total_steps,
    out_dir,
    checkpoint_every=1000,
    keep_checkpoints=3,
    log_every=100,
    sample_every=0,
    sample_steps=50,
    batch_size=None,
    verbose=1,
    callbacks=(),
    writer=None,
    run_lock=None,
):
    """Trains `model` (compiled) on `dataset` until `model.optimizer.iterations == total_steps`.

    Writes OUT/checkpoints/ckpt-<step>.keras every `checkpoint_every` steps (the newest
    `keep_checkpoints`) and at the end, including after a Ctrl-C; OUT/metrics.csv and
    TensorBoard scalars under OUT/logs every `log_every` steps; an EMA sample grid under
    OUT/samples every `sample_every` steps (0: never). A NaN/inf loss raises
    `NonFiniteLossError` naming the last good checkpoint. `callbacks` run before these (so an
    FID measured at a checkpoint step is in the row that step writes); pass `writer` to
    share the metrics table with them. OUT is locked meanwhile (`RunLock`; another trainer
    there raises `RunInUseError`); pass `run_lock` if you hold OUT's lock already.
    """
    with run_lock or RunLock(out_dir):
        start = int(model.optimizer.iterations)
        manager = CheckpointManager(os.path.join(out_dir, "checkpoints"), keep=keep_checkpoints)
        writer = writer or MetricsWriter(os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "logs"), resume_step=start)
        if start >= total_steps:
            latest = manager.latest()
            return TrainResult(start, False, None, latest[1] if latest else None)
        checkpoint = Checkpoint(manager, checkpoint_every)
        run_callbacks = [*callbacks, MetricsLogger(writer, log_every, batch_size)]
        if sample_every:
            run_callbacks.append(SampleGrid(os.path.join(out_dir, "samples"), sample_every, steps=sample_steps))
        run_callbacks.append(checkpoint)  # last: the metrics of its step are written before it saves
        if verbose:
            run_callbacks.append(ProgressBar(total_steps, batch_size or 0))
        interrupt = GracefulInterrupt(model)
        try:
            with interrupt:
                history = model.fit(dataset, epochs=1, steps_per_epoch=total_steps - start, shuffle=False, verbose=0, callbacks=run_callbacks)
        except NonFiniteLossError as error:
            latest = manager.latest()
            kept = f"the last good checkpoint is {latest[1]} (step {latest[0]})" if latest else "no checkpoint was saved"
            raise NonFiniteLossError(f"{error} Nothing was saved after it; {kept}.") from None
        except KeyboardInterrupt:
            if interrupt.signals < 2:  # not a forced second Ctrl-C: the last finished step is consistent
                checkpoint.save()
            raise
        finally:
            writer.close()
    step = checkpoint.step
    return TrainResult(step, step < total_steps, history, checkpoint.saved[-1][1] if checkpoint.saved else None)
