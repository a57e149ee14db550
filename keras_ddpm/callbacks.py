"""Keras callbacks for training diffusion models: metrics, sample grids, FID.

All of them number steps globally (`optimizer.iterations` when training begins plus the
batches since), so a resumed run continues its numbering instead of restarting at 0.
Keras' own `CSVLogger` and `TensorBoard` fall short here: they log per epoch or with a batch
counter that restarts at 0 in every `fit`, and log the epoch's running-mean loss.
"""

import csv
import math
import os
import time
import warnings

import keras
import numpy as np

from keras_ddpm import backend
from keras_ddpm import fid as fid_lib
from keras_ddpm import images as images_lib
from keras_ddpm.optimizers import learning_rate_at

FID_KEYS = ("fid", "kid", "kid_std")
METRICS_COLUMNS = ("step", "loss", "lr", "images_per_sec")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def check_finite(logs, step):
    """Raises `NonFiniteLossError` when `logs["loss"]` is NaN or inf (the running mean keeps a
    NaN)."""
    loss = float((logs or {}).get("loss", 0.0))
    if not math.isfinite(loss):
        raise NonFiniteLossError(f"The loss became {loss} by step {step}; training stopped.")
    return loss


def sync_model_state(model):
    """JAX trains on detached state: bring the variables back before reading them in a callback."""
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def optimizer_step(optimizer):
    """`optimizer.iterations` as an int (under a `tf.distribute` scope its value is a
    MirroredVariable, which `int()` does not take)."""
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


class StepCallback(keras.callbacks.Callback):
    """Keeps `self.step`, the global optimizer step after the latest batch (works with
    steps_per_execution)."""

    def __init__(self):
        super().__init__()
        self.step = 0
        self._epoch_start = 0

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model, "optimizer", None)
        self.step = optimizer_step(optimizer) if optimizer is not None else 0
        self._epoch_start = self.step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.step

    def on_train_batch_end(self, batch, logs=None):
        self.step = self._epoch_start + batch + 1


class MetricsWriter:
    """One table of training metrics by step: `csv_path` and TensorBoard scalars under `log_dir`.

    Values written for a step that already has a row are merged into it (loss and FID
    measured at the same step share a row); new columns rewrite the file with the wider
    header. `resume_step` drops rows after it, so a run resumed from a checkpoint continues
    the table without duplicated steps. Rows of an existing file without an integer step or
    with more fields than its header (damaged) are dropped with one warning.
    """

    def __init__(self, csv_path=None, log_dir=None, resume_step=None):
        self.csv_path = csv_path
        self.log_dir = log_dir
        self.rows = []
        self.columns = list(METRICS_COLUMNS)
        self._writer = None
        if csv_path and os.path.isfile(csv_path):
            with open(csv_path, newline="", errors="replace") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or self.columns)
                read = list(reader)
            if "step" not in self.columns:
                self.columns.insert(0, "step")
            self.rows = [row for row in read if self._row_step(row) is not None]
            if len(self.rows) != len(read):
                warnings.warn(
                    f"Skipped {len(read) - len(self.rows)} malformed row(s) of {csv_path} (no "
                    "integer step, or more fields than its header)."
                )
            if resume_step is not None:
                self.rows = [row for row in self.rows if self._row_step(row) <= resume_step]
            if len(self.rows) != len(read):
                self._rewrite()

    @staticmethod
    def _row_step(row):
        """The step of a row read by `csv.DictReader`, or None if the row is malformed."""
        if None in row:  # more fields than the header
            return None
        try:
            return int(row.get("step"))
        except (TypeError, ValueError):
            return None

    def write(self, step, values):
        values = {
            key: (float(value) if isinstance(value, (np.floating, np.integer)) else value)
            for key, value in values.items()
        }
        new_columns = [key for key in values if key not in self.columns]
        self.columns += new_columns
        if self.rows and int(self.rows[-1]["step"]) == step:
            self.rows[-1].update(values)
            self._rewrite()
        else:
            self.rows.append({"step": step, **values})
            if new_columns or not self.csv_path or not os.path.isfile(self.csv_path):
                self._rewrite()
            else:
                with open(self.csv_path, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=self.columns).writerow(self.rows[-1])
        self._scalars(step, values)

    def _rewrite(self):
        if not self.csv_path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.csv_path)), exist_ok=True)
        temporary = self.csv_path + ".tmp"
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(temporary, self.csv_path)

    def _scalars(self, step, values):
        if not self.log_dir or self._writer is False:
            return
        import importlib.util

        if (
            importlib.util.find_spec("tensorboard") is None
            or importlib.util.find_spec("tensorflow") is None
        ):
            warnings.warn(
                "TensorBoard logging needs tensorflow and tensorboard, so metrics are not logged "
                f"to {self.log_dir} (metrics.csv has them); `pip install tensorflow tensorboard`."
            )
            self._writer = False
            return
        import tensorflow as tf  # tf.summary writes TensorBoard event files under any backend

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for key, value in values.items():
                if isinstance(value, (int, float)) and not key.startswith("num_"):
                    tf.summary.scalar(key, value, step=step)
        self._writer.flush()

    def close(self):
        if self._writer:
            self._writer.close()
        self._writer = None


class MetricsLogger(StepCallback):
    """Every `every_n_steps` steps (and at the end), writes step, loss, lr and images/s to `writer`.

    `loss` is the mean over the steps since the previous row (recovered from the model's
    running-mean loss tracker, so nothing is reset in the compiled step). A NaN or inf loss
    raises `NonFiniteLossError`.
    """

    def __init__(self, writer, every_n_steps=100, batch_size=None):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(
                f"every_n_steps must be at least 1. Received: every_n_steps={every_n_steps}"
            )
        self.writer = writer
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._fit_start = self.step
        self._latest_logs = None
        self._last = (self.step, 0.0, time.perf_counter())  # (step, loss sum over this fit, time)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self._latest_logs = logs
        if self.step % self.every_n_steps == 0:
            self._log(logs)

    def on_train_end(self, logs=None):
        if self.step != self._last[0] and self._latest_logs is not None:
            self._log(self._latest_logs)  # the final (or interrupted) step

    def _log(self, logs):
        last_step, last_sum, last_time = self._last
        loss_sum = check_finite(logs, self.step) * (self.step - self._fit_start)
        now = time.perf_counter()
        values = {
            "loss": (loss_sum - last_sum) / max(self.step - last_step, 1),
            "lr": learning_rate_at(self.model.optimizer, self.step - 1),
        }
        if self.batch_size:
            values["images_per_sec"] = round(
                self.batch_size * (self.step - last_step) / max(now - last_time, 1e-9), 2
            )
        self.writer.write(self.step, values)
        self._last = (self.step, loss_sum, now)


class SampleGrid(StepCallback):
    """Every `every_n_steps` steps, a grid of EMA samples from fixed x_T to
    `directory/step_XXXXXXXX.png`; with `at_end`, one more of the last step when training ends
    between two (a run shorter than `every_n_steps` still leaves a grid), unless it was stopped
    (Ctrl-C: `model.stop_training`).

    The same noise (and labels, 0, 1, ... for class-conditional models) every time, so the
    grids show how the model changes.
    """

    def __init__(self, directory, every_n_steps, num_images=16, steps=50, seed=0, at_end=True):
        super().__init__()
        self.directory = directory
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.steps = steps
        self.seed = seed
        self.at_end = at_end
        self.paths = []

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._fit_start = self.step

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.step % self.every_n_steps == 0:
            self.save()

    def on_train_end(self, logs=None):
        trained = self.step > self._fit_start
        if self.at_end and trained and self.step % self.every_n_steps:
            if not self.model.stop_training:
                self.save()

    def save(self):
        """Samples the grid and writes it (in a multi-worker run, outside its strategy: the chief
        alone samples); returns its path."""
        sync_model_state(self.model)
        return backend.outside_distribution(self._sample_and_write)

    def _sample_and_write(self):
        noise = (
            np.random.default_rng(self.seed)
            .standard_normal((self.num_images, *self.model.image_shape))
            .astype("float32")
        )
        labels = (
            np.arange(self.num_images) % self.model.num_classes if self.model.num_classes else None
        )
        samples = self.model.generate(
            noise=noise, steps=self.steps, seed=self.seed, class_labels=labels
        )
        path = os.path.join(self.directory, f"step_{self.step:08d}.png")
        images_lib.save_image(images_lib.make_grid(samples), path)
        self.paths.append(path)
        return path


class FIDCallback(StepCallback):
    """Measures FID and KID of samples from the EMA weights during `fit`.

    Every `every_n_steps` optimizer steps (or `every_n_epochs` epochs) it draws
    `evaluation.num_images` images as `python cli.py eval` does (`evaluation.generated_batches`:
    the same sampling request, the same seeds each time, so changes come from the weights) and
    compares their Inception features with the reference statistics.

    The values go into the epoch logs as `fid`, `kid` and `kid_std` (so into `History`, and
    into `CSVLogger` / `TensorBoard` callbacks placed after this one); epochs without an
    evaluation log NaN. Each evaluation is also kept in `self.evaluations` and written at
    its global step to `writer` (a `MetricsWriter` shared with `MetricsLogger`, so one
    metrics.csv), or to one made from `csv_path` and `log_dir`.

    Args:
        reference: `fid.FeatureStatistics` of real images (from `fid.reference_statistics`
            with the same extractor), a dataset name / image folder, whose statistics
            are computed (and cached in `evaluation.cache_dir`) when training begins, or an
            .npz of precomputed statistics (`mu`, `sigma`: pytorch-fid's, clean-fid's).
        evaluation: an `evaluation.EvalConfig` (default: its defaults with 1,000 images):
            `num_images` generated per evaluation (FID is biased upwards for few), the sampling
            options, `batch_size` (per `generate` call and per Inception pass), `features`
            (the 2015 TF Inception by default), `resize`, `inception_weights`, `cache_dir`,
            `kid_subsets` and `kid_subset_size`.
        every_n_steps, every_n_epochs: how often; exactly one must be set.
        extractor: a `fid.FeatureExtractor`; by default `fid.feature_extractor` with
            `evaluation`'s features, weights and resizing, built when training begins.
        writer: a `MetricsWriter`; overrides `csv_path` and `log_dir`.
        prefix: prepended to the logged names (`prefix + "fid"`...), to tell several apart.
    """

    def __init__(
        self,
        reference,
        evaluation=None,
        every_n_steps=None,
        every_n_epochs=None,
        extractor=None,
        writer=None,
        csv_path=None,
        log_dir=None,
        prefix="",
        verbose=1,
    ):
        from keras_ddpm.evaluation import EvalConfig

        super().__init__()
        evaluation = evaluation or EvalConfig(num_images=1000)
        if (every_n_steps is None) == (every_n_epochs is None):
            raise ValueError(
                "Set exactly one of every_n_steps and every_n_epochs. Received: "
                f"every_n_steps={every_n_steps}, every_n_epochs={every_n_epochs}"
            )
        interval = every_n_steps if every_n_steps is not None else every_n_epochs
        if interval < 1:
            raise ValueError(f"The FID interval must be at least 1. Received: {interval}")
        if evaluation.num_images < 2:
            raise ValueError(
                f"FID needs at least 2 samples. Received: num_images={evaluation.num_images}"
            )
        self.reference = reference
        self.evaluation = evaluation
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.extractor = extractor
        self.prefix = prefix
        self.verbose = verbose
        self.evaluations = []
        self._epoch = 0
        self._epoch_results = None
        self.writer = writer or MetricsWriter(csv_path, log_dir)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        evaluation = self.evaluation
        if self.extractor is None:
            self.extractor = fid_lib.feature_extractor(
                evaluation.features,
                evaluation.inception_weights,
                evaluation.resize,
                min(evaluation.batch_size, evaluation.num_images),
            )
        if isinstance(self.reference, (str, os.PathLike)) and os.fspath(self.reference).endswith(
            ".npz"
        ):
            self.reference = fid_lib.load_statistics(os.fspath(self.reference), self.extractor)
        if isinstance(self.reference, (str, os.PathLike)):
            size, _, channels = self.model.image_shape
            self.reference, _ = fid_lib.reference_statistics(
                os.fspath(self.reference),
                size,
                channels,
                evaluation.num_images,
                self.extractor,
                evaluation.batch_size,
                evaluation.cache_dir if evaluation.use_cache else None,
            )

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._epoch = epoch
        self._epoch_results = None

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.every_n_steps and self.step % self.every_n_steps == 0:
            self.evaluate(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(logs)
        if logs is not None:
            logs.update(
                {
                    self.prefix + key: self._epoch_results[key] if self._epoch_results else math.nan
                    for key in FID_KEYS
                }
            )

    def on_train_end(self, logs=None):
        self.writer.close()

    def evaluate(self, logs=None):
        """Samples, extracts features and compares them with the reference; returns the results."""
        sync_model_state(self.model)
        evaluation = self.evaluation
        generated = backend.outside_distribution(  # the chief alone samples
            lambda: fid_lib.compute_statistics(
                evaluation.generated_batches(self.model),
                self.extractor,
                evaluation.num_images,
                progress=self.verbose > 1,
            )
        )
        compared = fid_lib.compare(
            generated, self.reference, evaluation.kid_subsets, evaluation.kid_subset_size
        )
        results = {
            "step": self.step,
            "epoch": self._epoch + 1,
            "loss": float((logs or {}).get("loss", math.nan)),
            **compared,
            # NaN where a statistics file gave no KID rows (or no image count)
            **{key: math.nan for key in (*FID_KEYS, "num_real") if compared[key] is None},
        }
        self.evaluations.append(results)
        self._epoch_results = results
        self._write(results)
        if self.verbose:
            print(
                f"\nstep {results['step']}: {self.prefix}FID {results['fid']:.3f} "
                f"({results['num_generated']} generated vs "
                f"{results['num_real']} real images), KID {results['kid']:.5f} +- "
                f"{results['kid_std']:.5f}"
            )
        return results

    def _write(self, results):
        keys = (*FID_KEYS, "num_generated", "num_real")
        self.writer.write(results["step"], {self.prefix + key: results[key] for key in keys})
