"""Quiet start-up: TensorFlow's and XLA's C++ start-up lines kept off the terminal.

Importing TensorFlow 2.21 writes about ten lines to stderr (oneDNN, CUDA probing, CPU features,
`failed call to cuInit`) from C++, before absl logging is initialised, so neither
`TF_CPP_MIN_LOG_LEVEL` nor Python's logging can stop all of them. `quiet_framework_logs()`, which
the CLI and the app call unless `-v` is given, sets `TF_CPP_MIN_LOG_LEVEL=3` (unless set) for the
later ones and sends file descriptor 2 to /dev/null while TensorFlow's modules execute, whenever
something first imports it: the command itself on the TensorFlow backend, a tf.data pipeline on
the others. Errors raised by the import still reach the user as exceptions.

Imports neither Keras nor TensorFlow (it runs before either loads).
"""

import contextlib
import importlib.abc
import importlib.util
import os
import sys


@contextlib.contextmanager
def stderr_to_devnull():
    """Sends file descriptor 2 (C and C++ writes included) to /dev/null for the block."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader(importlib.abc.Loader):
    """Executes a module (tensorflow) with stderr sent to /dev/null, then quiets its loggers."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with stderr_to_devnull():
            self._loader.exec_module(module)
        import logging

        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        with contextlib.suppress(ImportError):
            import absl.logging

            absl.logging.set_verbosity(absl.logging.ERROR)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the other finders do, with a `_QuietLoader` around its loader."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders locate it
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_framework_logs():
    """Keeps TensorFlow's start-up lines off the terminal from now on (see the module's text)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    if not any(isinstance(finder, _QuietTensorFlowFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
