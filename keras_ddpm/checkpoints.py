"""Atomic, verified, step-numbered training checkpoints in a run directory, its lock, and the
callback that saves them.

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
and the newest K are kept. A file damaged later (disk, copy) is caught by its zip CRCs or
when it fails to load, and resuming falls back to the next older checkpoint. One trainer
at a time holds the run directory's lock (`RunLock`).
"""

import os
import re
import warnings
import zipfile
import zlib

from keras_ddpm import backend
from keras_ddpm.callbacks import StepCallback
from keras_ddpm.callbacks import check_finite
from keras_ddpm.callbacks import sync_model_state

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here, so run directories are not locked
    fcntl = None

CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)\.keras$")
TEMPORARY_PREFIX = ".tmp-"
TEMPORARY_NAME = re.compile(r"^\.tmp-(\d+)-")  # .tmp-<writer's pid>-<final name>
LOCK_NAME = "train.lock"


class RunInUseError(RuntimeError):
    """Another process holds the run directory's lock."""


def _fsync_directory(directory):
    if os.name == "posix":  # Windows cannot open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def find_damage(path):
    """Why the `.keras` file at `path` is incomplete or damaged (a phrase), or None when it is
    whole.

    The zip directory is written last, so a truncated file fails to open; `testzip` then
    checks every member's CRC-32, which catches bytes damaged inside an intact directory.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = [name for name in ("config.json", "model.weights.h5") if name not in names]
            if missing:
                return f"it has no {missing[0]}"
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        return f"it is not a complete zip file ({error})"
    return f"{damaged} fails its CRC-32 check" if damaged else None


def is_complete(path):
    """A `.keras` file whose zip directory lists the config and weights and whose every member
    passes its CRC-32."""
    return find_damage(path) is None


def load_first_good(paths, load):
    """Loads the first of `paths` that is whole and loads: (path, model, skipped), path and
    model None if none does.

    `skipped` is [(path, reason)] for each file passed over. `load(path)` may raise anything
    for a damaged file (zip, h5py and Keras raise many kinds).
    """
    skipped = []
    for path in paths:
        reason = find_damage(path)
        if reason is None:
            try:
                return path, load(path), skipped
            except Exception as error:
                reason = f"it does not load ({type(error).__name__}: {error})"
        skipped.append((path, reason))
    return None, None, skipped


def write_atomically(model, path):
    """`model.save(path)` under a temporary name in the same folder, fsynced, then renamed:
    `path` is complete or untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f"{TEMPORARY_PREFIX}{os.getpid()}-{os.path.basename(path)}")
    try:
        # `save` wants a name ending in .keras; in a multi-worker run the chief alone saves, outside
        # the strategy (which would broadcast the variables saving makes to workers not saving).
        backend.outside_distribution(lambda: model.save(temporary))
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    _fsync_directory(directory)
    return path


def _writer_is_done(pid):
    """Whether the writer of a temporary file named with `pid` is this process (whose writes
    have ended) or gone."""
    if pid == os.getpid():
        return True
    if os.name != "posix":  # Windows' os.kill(pid, 0) would end that process: keep its file
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


class CheckpointManager:
    """`directory/ckpt-<step>.keras` files: atomic `save`, `latest` complete one, keep the
    newest `keep`."""

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

    def load_latest(self, load):
        """Loads the newest checkpoint that is whole and loads, falling back to older ones.

        Returns ((step, path, model) or None, skipped), `skipped` being [(path, reason)] of the
        newer files passed over; `load(path)` loads one file.
        """
        newest_first = self.checkpoints()[::-1]
        path, model, skipped = load_first_good([path for _, path in newest_first], load)
        steps = {path: step for step, path in newest_first}
        return ((steps[path], path, model) if path else None), skipped

    def save(self, model, step):
        """Writes `model` as the checkpoint of `step` atomically; returns its path."""
        final = write_atomically(model, self.path_for(step))
        self.prune(step)
        return final

    def prune(self, step=None):
        """Deletes all but the newest `keep` checkpoints up to `step` (all if None), and
        temporary files of dead writers.

        Checkpoints after `step` stay: a run that resumed before them skipped them as damaged,
        and they must not push its good checkpoints out (it overwrites them on reaching their step).
        """
        kept = [
            path for saved_step, path in self.checkpoints() if step is None or saved_step <= step
        ]
        for path in kept[: -self.keep]:
            os.remove(path)
        for name in os.listdir(self.directory):
            match = TEMPORARY_NAME.match(name)
            if match and _writer_is_done(int(match.group(1))):
                os.remove(os.path.join(self.directory, name))


class RunLock:
    """An OS advisory lock on `directory/train.lock` while a trainer uses the run directory.

    A second trainer gets `RunInUseError` naming the holder's pid (written into the file)
    instead of interleaving its checkpoints and metrics with the first's. The OS drops the lock
    when its holder exits or is killed, so no stale lock is ever left. Entering the same
    instance again nests (`fit` inside the CLI's `with`). Windows has no `fcntl`: there the
    directory is not locked.
    """

    def __init__(self, directory):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd = None
        self._depth = 0
        self._created = False

    def __enter__(self):
        if self._depth == 0 and fcntl is not None:
            self._acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            if self._created and os.listdir(self.directory) == [LOCK_NAME]:
                # A run that wrote nothing (a bad option found after locking) leaves no folder.
                os.remove(self.path)
                os.rmdir(self.directory)
            # releases the lock; the file stays (deleting it would race a new holder)
            os.close(self._fd)
            self._fd = None
        return False

    def _acquire(self):
        self._created = not os.path.isdir(self.directory)
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUseError(
                f"{self.directory} is in use by another trainer (pid {holder}); wait for it to "
                "end or use another run directory."
            ) from None
        except OSError as error:  # a file system without locks
            os.close(fd)
            warnings.warn(
                f"Could not lock {self.path} ({error}); make sure no other trainer uses "
                f"{self.directory}."
            )
            return
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd


class Checkpoint(StepCallback):
    """Saves a checkpoint every `every_n_steps` optimizer steps and when training ends or is
    stopped.

    A NaN or inf loss raises `NonFiniteLossError` instead of saving, so the newest
    checkpoint is always the last good one. `on_save(step, path)` runs after each save.
    """

    def __init__(self, manager, every_n_steps, on_save=None):
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(
                f"every_n_steps must be at least 1. Received: every_n_steps={every_n_steps}"
            )
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
