"""Keras callbacks for training diffusion models."""

import csv
import math
import os
import warnings

import keras

from keras_ddpm import fid as fid_lib

FID_KEYS = ("fid", "kid", "kid_std")


class FIDCallback(keras.callbacks.Callback):
    """Measures FID and KID of samples from the EMA weights during `fit`.

    Every `every_n_steps` optimizer steps (or `every_n_epochs` epochs) it draws `num_samples`
    images with `model.generate` (the same seeds each time, so changes come from the
    weights) and compares their Inception features with the reference statistics.

    The values go into the epoch logs as `fid`, `kid` and `kid_std` (so into `History`, and
    into `CSVLogger` / `TensorBoard` callbacks placed after this one); epochs without an
    evaluation log NaN. Each evaluation is also kept in `self.evaluations`, appended to
    `csv_path` and written as TensorBoard scalars under `log_dir`, at its global step.

    Args:
        reference: `fid.FeatureStatistics` of real images (from `fid.reference_statistics`
            with the same extractor), or a dataset name / image folder, whose statistics
            are computed (and cached in `cache_dir`) when training begins.
        num_samples: images generated per evaluation (FID is biased upwards for few).
        every_n_steps, every_n_epochs: how often; exactly one must be set.
        extractor: a `fid.FeatureExtractor`; by default InceptionV3 with `inception_weights`,
            built when training begins.
        sampler, steps, eta: passed to `model.generate`.
        batch_size: images per `generate` call and per Inception forward pass.
        seed: seed of the first sampling batch (batch i uses seed + i).
        prefix: prepended to the logged names (`prefix + "fid"`...), to tell several apart.
    """

    def __init__(
        self,
        reference,
        num_samples=1000,
        every_n_steps=None,
        every_n_epochs=None,
        extractor=None,
        inception_weights="imagenet",
        sampler="ddim",
        steps=50,
        eta=0.0,
        batch_size=50,
        seed=0,
        kid_subsets=100,
        kid_subset_size=1000,
        cache_dir=None,
        csv_path=None,
        log_dir=None,
        prefix="",
        verbose=1,
    ):
        super().__init__()
        if (every_n_steps is None) == (every_n_epochs is None):
            raise ValueError(
                f"Set exactly one of every_n_steps and every_n_epochs. Received: every_n_steps={every_n_steps}, every_n_epochs={every_n_epochs}"
            )
        interval = every_n_steps if every_n_steps is not None else every_n_epochs
        if interval < 1:
            raise ValueError(f"The FID interval must be at least 1. Received: {interval}")
        if num_samples < 2:
            raise ValueError(f"FID needs at least 2 samples. Received: num_samples={num_samples}")
        self.reference = reference
        self.num_samples = num_samples
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.extractor = extractor
        self.inception_weights = inception_weights
        self.sampler = sampler
        self.steps = steps
        self.eta = eta
        self.batch_size = batch_size
        self.seed = seed
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.cache_dir = cache_dir
        self.csv_path = csv_path
        self.log_dir = log_dir
        self.prefix = prefix
        self.verbose = verbose
        self.evaluations = []
        self._global_step = 0
        self._epoch = 0
        self._epoch_results = None
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.extractor is None:
            self.extractor = fid_lib.inception_v3(self.inception_weights, self.batch_size)
        if isinstance(self.reference, (str, os.PathLike)):
            size, _, channels = self.model.image_shape
            self.reference, _ = fid_lib.reference_statistics(
                os.fspath(self.reference), size, channels, self.num_samples, self.extractor, self.batch_size, self.cache_dir
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_results = None

    def on_train_batch_end(self, batch, logs=None):
        self._global_step += 1
        if self.every_n_steps and self._global_step % self.every_n_steps == 0:
            self.evaluate(logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self.evaluate(logs)
        if logs is not None:
            logs.update({self.prefix + key: self._epoch_results[key] if self._epoch_results else math.nan for key in FID_KEYS})

    def on_train_end(self, logs=None):
        if self._writer:
            self._writer.close()
        self._writer = None

    def evaluate(self, logs=None):
        """Samples, extracts features and compares them with the reference; returns the results."""
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()  # JAX trains on detached state: bring the weights back
        batches = fid_lib.model_batches(
            self.model, self.num_samples, self.batch_size, seed=self.seed, sampler=self.sampler, steps=self.steps, eta=self.eta
        )
        generated = fid_lib.compute_statistics(batches, self.extractor, self.num_samples, progress=self.verbose > 1)
        results = {
            "step": self._global_step,
            "epoch": self._epoch + 1,
            "loss": float((logs or {}).get("loss", math.nan)),
            **fid_lib.compare(generated, self.reference, self.kid_subsets, self.kid_subset_size),
        }
        self.evaluations.append(results)
        self._epoch_results = results
        self._write(results)
        if self.verbose:
            print(
                f"\nstep {results['step']}: {self.prefix}FID {results['fid']:.3f} ({results['num_generated']} generated vs "
                f"{results['num_real']} real images), KID {results['kid']:.5f} +- {results['kid_std']:.5f}"
            )
        return results

    def _write(self, results):
        if self.csv_path:
            os.makedirs(os.path.dirname(os.path.abspath(self.csv_path)), exist_ok=True)
            new = not os.path.isfile(self.csv_path) or os.path.getsize(self.csv_path) == 0
            with open(self.csv_path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(results))
                if new:
                    writer.writeheader()
                writer.writerow(results)
        if self.log_dir and self._writer is not False:
            import importlib.util

            import tensorflow as tf  # tf.summary writes TensorBoard event files under any backend

            if importlib.util.find_spec("tensorboard") is None:
                warnings.warn(f"TensorBoard is not installed, so FID is not logged to {self.log_dir}; `pip install tensorboard`.")
                self._writer = False
                return
            if self._writer is None:
                self._writer = tf.summary.create_file_writer(self.log_dir)
            with self._writer.as_default():
                for key in FID_KEYS:
                    tf.summary.scalar(self.prefix + key, results[key], step=results["step"])
            self._writer.flush()
