"""A training run that survives real use: checkpoints and resume, metrics, samples, Ctrl-C, NaN
stop.

    result = training.run(RunConfig(preset="mnist", out_dir="runs/mnist"))  # `python cli.py train`

    with training.distribution_scope("mirrored"):       # or "data_parallel" (JAX), "none"
        model = DiffusionModel(config); model.compile()
        result = training.fit(model, dataset, RunConfig(steps=800_000, out_dir="runs/cifar10"))

`run` is the whole run of a `RunConfig` (`keras_ddpm.run_config`): resume, the dataset,
OUT/config.json, FID callbacks, `fit` and OUT/model.keras. `fit` is Keras' `model.fit` with the
run's callbacks: `Checkpoint` (atomic, every N steps, keep K), `MetricsLogger` (OUT/metrics.csv
and TensorBoard under OUT/logs), `SampleGrid` (OUT/samples) and a progress bar; it continues from
`model.optimizer.iterations`, so a model loaded from a checkpoint trains on to the same total.
"""

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time

import keras

from keras_ddpm import backend
from keras_ddpm.callbacks import FIDCallback
from keras_ddpm.callbacks import MetricsLogger
from keras_ddpm.callbacks import MetricsWriter
from keras_ddpm.callbacks import NonFiniteLossError
from keras_ddpm.callbacks import SampleGrid
from keras_ddpm.callbacks import StepCallback
from keras_ddpm.callbacks import optimizer_step
from keras_ddpm.checkpoints import Checkpoint
from keras_ddpm.checkpoints import CheckpointManager
from keras_ddpm.checkpoints import RunLock
from keras_ddpm.checkpoints import write_atomically
from keras_ddpm.diffusion_model import DiffusionModel
from keras_ddpm.run_config import CONFIG_NAME
from keras_ddpm.run_config import DISTRIBUTIONS  # noqa: F401 (re-exported)
from keras_ddpm.run_config import MIXED_PRECISION_POLICIES
from keras_ddpm.saving import load_model_file

MIXED_PRECISION = MIXED_PRECISION_POLICIES


def set_mixed_precision(mode):
    """Sets Keras' global dtype policy: "no" (float32), "bf16" or "fp16" ("mixed_float16" gets
    loss scaling).

    Call before building the model. Variables (and so EMA weights and optimizer state) stay
    float32; `DiffusionModel` keeps the schedule math and the loss in float32. Raises ValueError
    where the backend cannot compute in that dtype on this machine
    (`backend.compute_dtype_problem`).
    """
    if mode not in MIXED_PRECISION:
        raise ValueError(
            f"mixed precision must be one of {tuple(MIXED_PRECISION)}. Received: {mode!r}"
        )
    policy = keras.DTypePolicy(MIXED_PRECISION[mode])
    problem = backend.compute_dtype_problem(policy.compute_dtype)
    if problem:
        raise ValueError(f"--mixed-precision {mode}: {problem}")
    keras.config.set_dtype_policy(policy)


def num_replicas(distribute):
    """How many devices `distribution_scope(distribute)` splits each batch across."""
    return backend.num_replicas(distribute)


def distribution_scope(distribute="none"):
    """Builds, compiles and fits inside this scope to split every global batch across the local
    devices.

    "mirrored": `tf.distribute.MirroredStrategy` (TensorFlow backend: all GPUs, or all logical
    CPUs). "data_parallel": `keras.distribution.DataParallel` (JAX backend). For several
    machines, see the README (MultiWorkerMirroredStrategy / `keras.distribution.initialize`).
    """
    return backend.distribution_scope(distribute)


class ProgressBar(StepCallback):
    """One console line: step / total, a bar, loss, images/s and ETA (refreshed at most every
    `interval` s).

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
        text = (
            f"step {self.step}/{self.total_steps} [{bar[:21]}] {100 * done:3.0f}% loss {loss:.4f}"
        )
        first_step, first_time = self._first
        if self.step > first_step:
            rate = (self.step - first_step) / (now - first_time)
            eta = int((self.total_steps - self.step) / rate)
            text += (
                f" {rate * self.batch_size:.1f} img/s "
                f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"
            )
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
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
            "(again to quit now)",
            flush=True,
        )
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


def fit(model, dataset, config, callbacks=(), writer=None, run_lock=None):
    """Trains `model` (compiled) on `dataset` until `model.optimizer.iterations == config.steps`.

    `config` is a `RunConfig`: its `steps` (None: the model's `train_steps`), `out_dir` (OUT),
    `checkpoint_every`, `keep_checkpoints`, `log_every`, `sample_every`, `sample_steps`,
    `batch_size` (for images/s; None: not shown) and `verbose` are read. Writes
    OUT/checkpoints/ckpt-<step>.keras every `checkpoint_every` steps (the newest
    `keep_checkpoints`) and at the end, including after a Ctrl-C; OUT/metrics.csv and
    TensorBoard scalars under OUT/logs every `log_every` steps (loss: the mean of those steps;
    the progress bar's is the mean since this session's first step); an EMA sample grid under
    OUT/samples every `sample_every` steps and of the last step (0: never). A NaN/inf loss raises
    `NonFiniteLossError` naming the last good checkpoint. `callbacks` run before these (so an
    FID measured at a checkpoint step is in the row that step writes); pass `writer` to
    share the metrics table with them. OUT is locked meanwhile (`RunLock`; another trainer
    there raises `RunInUseError`); pass `run_lock` if you hold OUT's lock already.
    """
    total_steps = config.steps or model.config.train.train_steps
    out_dir = config.out_dir
    with run_lock or RunLock(out_dir):
        start = optimizer_step(model.optimizer)
        manager = CheckpointManager(
            os.path.join(out_dir, "checkpoints"), keep=config.keep_checkpoints
        )
        writer = writer or MetricsWriter(
            os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "logs"), resume_step=start
        )
        if start >= total_steps:
            latest = manager.latest()
            return TrainResult(start, False, None, latest[1] if latest else None)
        _check_steps_per_execution(
            config, getattr(model, "steps_per_execution", 1), total_steps - start
        )
        checkpoint = Checkpoint(manager, config.checkpoint_every)
        run_callbacks = [*callbacks, MetricsLogger(writer, config.log_every, config.batch_size)]
        if config.sample_every:
            grids = SampleGrid(
                os.path.join(out_dir, "samples"), config.sample_every, steps=config.sample_steps
            )
            run_callbacks.append(grids)
        run_callbacks.append(checkpoint)  # last: its step's metrics are written before it saves
        if config.verbose:
            run_callbacks.append(ProgressBar(total_steps, config.batch_size or 0))
        interrupt = GracefulInterrupt(model)
        try:
            with interrupt:
                history = model.fit(
                    dataset,
                    epochs=1,
                    steps_per_epoch=total_steps - start,
                    shuffle=False,
                    verbose=0,
                    callbacks=run_callbacks,
                )
        except NonFiniteLossError as error:
            latest = manager.latest()
            kept = "no checkpoint was saved"
            if latest:
                kept = f"the last good checkpoint is {latest[1]} (step {latest[0]})"
            raise NonFiniteLossError(f"{error} Nothing was saved after it; {kept}.") from None
        except KeyboardInterrupt:
            if interrupt.signals < 2:  # not a forced second Ctrl-C: the last step is consistent
                checkpoint.save()
            raise
        finally:
            writer.close()
    step = checkpoint.step
    newest = checkpoint.saved[-1][1] if checkpoint.saved else None
    return TrainResult(step, step < total_steps, history, newest)


def _check_steps_per_execution(config, per_call, left):
    """ValueError (one sentence) where `per_call` steps a call (`--steps-per-execution`) do not
    divide the steps left to train or an interval of the callbacks: they see one batch end per
    call (Keras' TensorFlow trainer and keras_ddpm's JAX one), so they would skip a step they
    wait for, and the last call would train past the planned steps."""
    if per_call <= 1:
        return
    intervals = {
        "the steps left to train": left,
        "--log-every": config.log_every,
        "--checkpoint-every": config.checkpoint_every,
        "--sample-every": config.sample_every,
        "--fid-every": getattr(config, "fid_every", 0),
    }
    wrong = [f"{name} {value}" for name, value in intervals.items() if value and value % per_call]
    if wrong:
        raise ValueError(
            f"--steps-per-execution {per_call} must divide {', '.join(wrong)}: callbacks run "
            "once per call of that many steps."
        )


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What `run` did: it reached `step` of `total_steps`; `interrupted` (Ctrl-C or SIGTERM) runs
    keep their `checkpoint` and write no model file, the others are saved to `model_path`."""

    step: int
    total_steps: int
    interrupted: bool
    checkpoint: str  # the newest checkpoint's path
    model_path: str  # OUT/model.keras, None when interrupted
    history: object  # Keras' History of this session, None when nothing was left to train
    model: object

    @property
    def final_loss(self):
        """The loss of the last step trained in this session, None when none was."""
        losses = self.history.history.get("loss") if self.history else None
        return losses[-1] if losses else None


def run(config, explicit=None, echo=None):
    """Trains the run that `config` (a `RunConfig`) describes and saves OUT/model.keras.

    Without `config.resume`, a new model of `config.preset_config()` trains, and OUT must hold
    no checkpoints. With it, the options of OUT/config.json fill in those not in `explicit`
    (`RunConfig.with_saved_options`), and training continues from the newest checkpoint that
    loads; damaged ones are skipped and reported. OUT is locked (`RunLock`) until model.keras
    is written; OUT/config.json records the options, the backend and the model's configuration.
    With `fid_every`, FID and KID are measured during training (`callbacks.FIDCallback`).
    A run shorter than its learning-rate warm-up or a few EMA horizons gets one `warning:` line
    (`TrainConfig.short_run_warning`) before anything is built.

    `echo(message, err=False)` reports progress (default: print). Returns a `RunResult`.
    Raises `RunInUseError` when another trainer holds OUT, `NonFiniteLossError` when the loss
    diverges, and ValueError (one sentence) for an option or a run directory that cannot be used.
    """
    echo = echo or _echo
    config = config.with_saved_options(explicit)
    out_dir = config.out_dir
    # Several processes: joined first (TensorFlow's strategy must exist before any TensorFlow
    # computation); only the chief writes into OUT.
    multi_worker = config.distribute == backend.MULTI_WORKER
    worker = backend.launched_worker() if multi_worker else backend.Worker()
    preset = config.preset_config()
    batch_size, total = preset.train.batch_size, preset.train.train_steps
    if batch_size % worker.count:  # before joining, where the others would wait for this one
        raise ValueError(
            f"The batch size {batch_size} does not split evenly across {worker.count} processes."
        )
    if multi_worker:
        backend.start_workers()
    set_mixed_precision(config.mixed_precision)
    replicas = num_replicas(config.distribute)
    if batch_size % replicas:
        raise ValueError(
            f"The batch size {batch_size} does not split evenly across {replicas} devices"
            + (f" of {worker.count} processes." if multi_worker else ".")
        )
    accumulated = preset.train.grad_accum
    if (batch_size // replicas) % accumulated:
        raise ValueError(
            f"Each of the {replicas} devices' {batch_size // replicas} examples do not split into "
            f"{accumulated} equal micro-batches (--grad-accum); pick a batch size divisible by "
            f"{replicas * accumulated}."
        )
    if config.steps_per_execution > 1 and not backend.supports_steps_per_execution():
        raise ValueError(
            "--steps-per-execution needs the tensorflow or jax backend; PyTorch runs one step "
            "per call."
        )
    manager = CheckpointManager(os.path.join(out_dir, "checkpoints"), keep=config.keep_checkpoints)
    run_lock = RunLock(out_dir) if worker.is_chief else contextlib.nullcontext()
    with run_lock:  # until model.keras is written
        short_run = preset.train.short_run_warning()
        if short_run and worker.is_chief:  # in OUT, before anything is built
            echo(f"warning: {short_run}", err=True)
        if not config.resume and manager.checkpoints():
            raise ValueError(
                f"{out_dir} already holds checkpoints: pass --resume to continue that run, or "
                "choose another --out."
            )
        keras.utils.set_random_seed(config.seed)
        with distribution_scope(config.distribute):
            model = _model_to_train(config, preset, manager, echo)
            start = optimizer_step(model.optimizer)
            dataset = _training_dataset(config, model, batch_size, start)
            dataset = backend.worker_dataset(dataset, config.distribute)
            if not worker.is_chief:
                echo(f"worker {worker.index} of {worker.count}: training from step {start}")
                with backend.lost_workers_reported():
                    result = _fit_worker(model, dataset, dataclasses.replace(config, steps=total))
                return _result(result, total, None, model)
            _write_json(
                os.path.join(out_dir, CONFIG_NAME),
                {
                    "dataset": config.dataset,
                    "seed": config.seed,
                    "backend": backend.backend_name(),
                    "config": model.config.replace(train_steps=total).to_dict(),
                    "options": config.options(),
                },
            )
            writer = MetricsWriter(
                os.path.join(out_dir, "metrics.csv"),
                os.path.join(out_dir, "logs"),
                resume_step=start,
            )
            callbacks = _fid_callbacks(config, model, writer, echo) if config.fid_every else []
            devices = f" on {replicas} devices" if replicas > 1 else ""
            devices += f" of {worker.count} processes" if multi_worker else ""
            echo(
                f"training {model.config.name} ({model.network.count_params():,} parameters) on "
                f"{config.dataset} from step {start} to {total}{devices}"
            )
            session = dataclasses.replace(config, steps=total, batch_size=batch_size)
            with backend.lost_workers_reported():
                result = fit(model, dataset, session, callbacks, writer, run_lock)
        model_path = None
        if not result.interrupted:
            model_path = write_atomically(model, os.path.join(out_dir, "model.keras"))
    return _result(result, total, model_path, model)


def _result(result, total, model_path, model):
    return RunResult(
        step=result.step,
        total_steps=total,
        interrupted=result.interrupted,
        checkpoint=result.checkpoint,
        model_path=model_path,
        history=result.history,
        model=model,
    )


def _fit_worker(model, dataset, config):
    """`fit` on a worker that is not the chief: the same steps, nothing written (the chief
    checkpoints, logs and samples)."""
    start, total = optimizer_step(model.optimizer), config.steps
    history = None
    if start < total:
        with GracefulInterrupt(model):
            history = model.fit(
                dataset, epochs=1, steps_per_epoch=total - start, shuffle=False, verbose=0
            )
    step = optimizer_step(model.optimizer)
    return TrainResult(step, step < total, history, None)


def _echo(message, err=False):
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def _model_to_train(config, preset, manager, echo):
    """The newest checkpoint that loads (with `resume`), else a new model; compiled."""
    latest, skipped = manager.load_latest(load_model_file) if config.resume else (None, [])
    for path, reason in skipped:
        echo(f"skipped {path}: {reason}", err=True)
    if skipped and not latest:
        raise ValueError(
            f"None of the checkpoints in {manager.directory} loads; move them away to train "
            "again from step 0."
        )
    if latest:
        step, path, model = latest
        echo(f"resuming from {path} (step {step})")
    else:
        if config.resume:
            echo(f"no checkpoint in {manager.directory}; starting at step 0")
        model = DiffusionModel(preset, seed=config.seed)
    jit = backend.default_jit_compile() if config.jit_compile is None else config.jit_compile
    model.compile(
        optimizer=model.optimizer if latest else None,
        jit_compile=jit,
        steps_per_execution=config.steps_per_execution,
    )
    return model


def _training_dataset(config, model, batch_size, start):
    from keras_ddpm import data

    unet, train = model.config.unet, model.config.train
    flip = config.flip
    if flip is None:
        flip = train.horizontal_flip and data.default_horizontal_flip(config.dataset)
    return data.make_dataset(
        config.dataset,
        unet.image_size,
        unet.image_channels,
        batch_size,
        with_labels=bool(unet.num_classes),
        horizontal_flip=flip,
        seed=config.seed + start,  # a resumed run draws a new data order, not the first batches
        data_dir=config.data_dir,
        crop=config.crop,
        cache=None if config.cache == "none" else config.cache,
    )


def _fid_callbacks(config, model, writer, echo):
    """[FIDCallback] for `fid_every`: reference statistics first, so bad weights fail before
    training."""
    from keras_ddpm import fid
    from keras_ddpm.evaluation import EvalConfig

    evaluation = EvalConfig(
        num_images=config.fid_samples,
        batch_size=min(50, config.fid_samples),
        steps=config.fid_steps,
        features=config.fid_features,
        resize=config.fid_resize,
        inception_weights=config.inception_weights,
    )
    if config.fid_steps > model.schedule.timesteps:
        raise ValueError(
            f"--fid-steps {config.fid_steps} exceeds the model's {model.schedule.timesteps} "
            "training timesteps."
        )
    evaluation.sample_request(model)  # a bad sampling option fails before training
    extractor = fid.feature_extractor(
        config.fid_features, config.inception_weights, config.fid_resize, evaluation.batch_size
    )
    size, _, channels = model.image_shape
    echo(f"reference statistics of {config.dataset} ({config.fid_samples} images at most)")
    reference, _ = fid.reference_statistics(
        config.dataset,
        size,
        channels,
        config.fid_samples,
        extractor,
        cache_dir=fid.default_cache_dir(),
        progress=True,
        crop=config.crop,
        data_dir=config.data_dir,
    )
    callback = FIDCallback(
        reference,
        evaluation,
        every_n_steps=config.fid_every,
        extractor=extractor,
        writer=writer,
        csv_path=os.path.join(config.out_dir, "metrics.csv"),
        log_dir=os.path.join(config.out_dir, "logs"),
    )
    return [callback]


def _write_json(path, value):
    """Writes JSON atomically (a temporary file in the same folder, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)
