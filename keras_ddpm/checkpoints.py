"""Atomic, step-numbered training checkpoints in a run directory, and the callback that writes them.

A checkpoint is a full `.keras` file (`model.save`): the config, the trained and EMA
weights, the optimizer state (its `iterations` is the global step) and the seed-generator
states (`DiffusionModel.save_own_variables`), so `load_model` gives back a model that
trains on exactly where it stopped.

Why not Keras' `BackupAndRestore` / `ModelCheckpoint`: BackupAndRestore keeps one backup,
which it deletes when training ends, writes it in place (a kill while writing leaves a
broken file the next run loads) and tracks epochs and batches, not optimizer steps;
ModelCheckpoint also writes in place and keeps every file or only the best. Here a file is
written under a temporary name in the same directory, fsynced and renamed (`os.replace` is
atomic on POSIX and Windows), so `ckpt-<step>.keras` either is complete or does not exist,
and the newest K are kept.
"""

import os
import re
import zipfile

from keras_ddpm.callbacks import StepCallback
from keras_ddpm.callbacks import check_finite
from keras_ddpm.callbacks import sync_model_state

CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)\.keras$")
TEMPORARY_PREFIX = ".tmp-"


def _fsync_directory(directory):
    if os.name == "posix":  # Windows cannot open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_complete(path):
    """A `.keras` file whose zip directory (written last) is readable and lists the config and weights."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return "config.json" in names and "model.weights.h5" in names


class CheckpointManager:
    """`directory/ckpt-<step>.keras` files: atomic `save`, `latest` complete one, keep the newest `keep`."""

    def __init__(self, directory, keep=3):
        if keep < 1:
            raise ValueError(f"keep must be at least 1. Received: keep={keep}")
        self.directory = directory
        self.keep = keep

    def path_for(self, step):
        return os.path.join(self.directory, f"ckpt-{step:08d}.keras")

    def checkpoints(self):
        """[(step, path)] of the files named like checkpoints, oldest first (complete or not)."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for name in os.listdir(self.directory):
            match = CHECKPOINT_NAME.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(self.directory, name)))
        return sorted(found)

    def latest(self):
        """(step, path) of the newest complete checkpoint, or None."""
        for step, path in reversed(self.checkpoints()):
            if is_complete(path):
                return step, path
        return None

    def save(self, model, step):
        """Writes `model` as the checkpoint of `step` atomically; returns its path."""
        os.makedirs(self.directory, exist_ok=True)
        final = self.path_for(step)
        temporary = os.path.join(self.directory, f"{TEMPORARY_PREFIX}{os.getpid()}-{os.path.basename(final)}")
        try:
            model.save(temporary)  # `save` wants a name ending in .keras
            with open(temporary, "rb") as f:
                os.fsync(f.fileno())
            os.replace(temporary, final)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        _fsync_directory(self.directory)
        self.prune()
        return final

    def prune(self):
        """Deletes all but the newest `keep` checkpoints, and temporary files of dead writers."""
        for _, path in self.checkpoints()[: -self.keep]:
            os.remove(path)
        for name in os.listdir(self.directory):
            if name.startswith(TEMPORARY_PREFIX) and not name.startswith(f"{TEMPORARY_PREFIX}{os.getpid()}-"):
                os.remove(os.path.join(self.directory, name))


class Checkpoint(StepCallback):
    """Saves a checkpoint every `every_n_steps` optimizer steps and when training ends or is stopped.

    A NaN or inf loss raises `NonFiniteLossError` instead of saving, so the newest
    checkpoint is always the last good one. `on_save(step, path)` runs after each save.
    """

    def __init__(self, manager, every_n_steps, on_save=None):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1. Received: every_n_steps={every_n_steps}")
        self.manager = manager
        self.every_n_steps = every_n_steps
        self.on_save = on_save
        self.saved = []

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._saved_step = self.step
        self._latest_logs = None

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        self._latest_logs = logs
        if self.step % self.every_n_steps == 0:
            self.save(logs)

    def on_train_end(self, logs=None):
        if self.step != self._saved_step:
            self.save(self._latest_logs)

    def save(self, logs=None):
        if logs is not None:
            check_finite(logs, self.step)
        sync_model_state(self.model)
        path = self.manager.save(self.model, self.step)
        self._saved_step = self.step
        self.saved.append((self.step, path))
        if self.on_save:
            self.on_save(self.step, path)
        return path
