"""The one place where the Keras backend matters: everything else in keras_ddpm is `keras.ops`.

Each framework has its module here, `tensorflow.py`, `jax.py` and `torch.py`: its training step
(gradients are taken differently by each; the loss itself is `DiffusionModel.
compute_diffusion_loss`, shared by all three), its compilation of inference functions and
sampling loops, its data-parallel strategy and, for PyTorch, the layer kernels and the fused
optimizer step. The functions here hand each call to the active backend's module, imported on
first use (only that one: each imports its framework at the top). Where a module does not define
a name, the backend-neutral behaviour written here applies: Keras' own layers, one replica, no
flags. Private Keras and PyTorch API is reached only through `internals`, which checks versions.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib
import os
import sys

import keras

from keras_ddpm.run_config import DISTRIBUTION_BACKENDS

BACKENDS = ("tensorflow", "torch", "jax")
# Each data-parallel strategy (`distribution_scope`) and the backend that runs it.
DISTRIBUTIONS = DISTRIBUTION_BACKENDS


def backend_name():
    """The active Keras backend: "tensorflow", "torch" or "jax" (Keras fixes it at import). To
    record (config.json, the app's title); code that depends on it belongs in this package."""
    return keras.backend.backend()


@functools.cache
def _framework():
    name = backend_name()
    if name not in BACKENDS:
        raise NotImplementedError(
            f"keras_ddpm supports the tensorflow, torch and jax backends, not {name!r}."
        )
    return importlib.import_module(f"{__name__}.{name}")


def _own(name):
    """The active backend module's `name`; None where it keeps the behaviour written here."""
    return getattr(_framework(), name, None)


# Process set-up.


def configure_xla_cpu():
    """Switches XLA's CPU YNNPACK fusions off for JAX, unless XLA_FLAGS already names them.

    XLA reads its flags when JAX first computes, so call this before any JAX computation (the CLI
    and the app do, first thing). Changes `os.environ["XLA_FLAGS"]`; nothing on other backends.
    """
    configure = _own("configure_xla_cpu")
    if configure is not None:
        configure()


def launcher_environment(backend, index, count, ports):
    """The variables that `backend`'s launcher sets for worker `index` of `count` processes on
    this host (127.0.0.1): `TF_CONFIG` (TensorFlow, a port per worker), `KERAS_DISTRIBUTION_*`
    (JAX, the coordinator at the first port) or torchrun's (PyTorch, the store at the first
    port). For tests and local runs; on several hosts each launcher names their addresses."""
    if backend == "tensorflow":
        workers = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
        task = f'{{"type": "worker", "index": {index}}}'
        return {"TF_CONFIG": f'{{"cluster": {{"worker": [{workers}]}}, "task": {task}}}'}
    if backend == "jax":
        return {
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{ports[0]}",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": str(count),
            "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
        }
    return {
        "RANK": str(index),
        "LOCAL_RANK": "0",
        "WORLD_SIZE": str(count),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(ports[0]),
    }


def child_environment(backend, **extra):
    """`os.environ` for a child Python process on Keras backend `backend` (TensorFlow's C++ logs
    quiet), with `extra` variables added."""
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def default_jit_compile():
    """`jit_compile` for `fit`: XLA on TensorFlow only with a GPU; elsewhere Keras' "auto" (JAX
    always compiles, PyTorch runs eagerly)."""
    own = _own("default_jit_compile")
    return own() if own else "auto"


def supports_steps_per_execution():
    """Whether `fit` can run several steps per call (`steps_per_execution` > 1): TensorFlow and
    JAX; PyTorch runs one step per call."""
    own = _own("supports_steps_per_execution")
    return own() if own else True


def compute_dtype_problem(dtype):
    """Why this backend cannot train the network in `dtype` on its default device, as one
    sentence; None where it can.

    Asked when a mixed precision policy is set, so that a missing kernel stops a run before it
    trains rather than in its first backward pass. PyTorch (whose CPU kernels for bfloat16 and
    float16 came one by one over its releases) and JAX (whose CPU compiler lacks a float16
    attention product) are asked; TensorFlow computes both.
    """
    own = _own("compute_dtype_problem")
    return own(dtype) if own else None


# Data.


def tensorflow_for_data():
    """TensorFlow for tf.data pipelines: under JAX or PyTorch it must not take the GPU's memory."""
    own = _own("tensorflow_for_data")
    if own:
        return own()
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow's devices were already initialised
        pass
    return tf


def prefetch_device():
    """The device tf.data should prefetch batches to ("/GPU:0"), or None: JAX and PyTorch move
    batches to their devices themselves, and a tf.distribute strategy places them itself."""
    own = _own("prefetch_device")
    return own() if own else None


# Randomness and replicas.


def seed_generator(seed=None):
    """`keras.random.SeedGenerator(seed)` whose draws for neighbouring seeds are independent.

    Keras' PyTorch backend seeds draw k of `SeedGenerator(s)` with the integer s + k, so seed
    s + 1 replays seed s's stream shifted by one draw (batch i of `eval` sampled with seed + i
    would repeat batch 0's noise). There the seed is first spread over 31 bits by NumPy's
    `SeedSequence` hash; TensorFlow and JAX draw from the pair (s, k) and keep `seed` as is.
    """
    own = _own("seed_generator")
    return own(seed) if own else keras.random.SeedGenerator(seed)


def replica_context():
    """(replica id, number of replicas) inside a `tf.distribute` step; (0, 1) everywhere else.

    JAX's `keras.distribution.DataParallel` needs nothing here: it compiles one program for
    the global batch and XLA splits it across devices.
    """
    own = _own("replica_context")
    return own() if own else (0, 1)


def _distribution_backend(distribute):
    """The backend that `distribute` needs (None for "none"); ValueError for another backend."""
    if distribute not in DISTRIBUTIONS:
        raise ValueError(
            f"distribute must be one of {tuple(DISTRIBUTIONS)}. Received: {distribute!r}"
        )
    needed = DISTRIBUTIONS[distribute]
    if needed and needed != backend_name():
        raise ValueError(
            f"--distribute {distribute} needs the {needed} backend (KERAS_BACKEND={needed})."
        )
    return needed


def num_replicas(distribute):
    """How many devices `distribution_scope(distribute)` splits each batch across (for
    "multi_worker", those of all processes: call `start_workers` first)."""
    if distribute == MULTI_WORKER:
        return _framework().multi_worker_replicas()
    return _framework().num_replicas() if _distribution_backend(distribute) else 1


def distribution_scope(distribute="none"):
    """A context to build, compile and fit in that splits every global batch across the local
    devices: "mirrored" (`tf.distribute.MirroredStrategy`, TensorFlow: all GPUs, or all logical
    CPUs), "data_parallel" (`keras.distribution.DataParallel`, JAX), or "none"; or across the
    devices of all processes: "multi_worker" (after `start_workers`)."""
    if distribute == MULTI_WORKER:
        return _framework().multi_worker_scope()
    if _distribution_backend(distribute):
        return _framework().distribution_scope()
    return contextlib.nullcontext()


# Several processes (--distribute multi_worker, docs/multi_worker.md).

MULTI_WORKER = "multi_worker"
# Seconds a worker waits for the others (to join, and in each step's collective) before it stops
# with an error that names the worker it lost.
WORKER_TIMEOUT_VARIABLE = "KERAS_DDPM_WORKER_TIMEOUT"
DEFAULT_WORKER_TIMEOUT = 1800  # torch's own default for gloo: a chief's FID pass fits


class WorkerLostError(RuntimeError):
    """Another worker of a multi-worker run stopped answering."""


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process's place among the processes of a run: `index` of `count`; 0 is the chief,
    the only one that writes files."""

    index: int = 0
    count: int = 1

    @property
    def is_chief(self):
        return self.index == 0


def worker_timeout():
    """`KERAS_DDPM_WORKER_TIMEOUT` in seconds (default 1800); ValueError when it is not a
    positive number."""
    text = os.environ.get(WORKER_TIMEOUT_VARIABLE, str(DEFAULT_WORKER_TIMEOUT))
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(
            f"{WORKER_TIMEOUT_VARIABLE} must be a number of seconds > 0. Received: {text!r}"
        )
    return seconds


def start_workers():
    """Joins this process to the other workers of a multi-worker run, as the launcher's
    environment describes them, and returns its `Worker`.

    TensorFlow: `TF_CONFIG` (`tf.distribute.MultiWorkerMirroredStrategy`). JAX:
    `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `_NUM_PROCESSES` and `_PROCESS_ID`
    (`keras.distribution.initialize`). PyTorch: torchrun's `RANK`, `WORLD_SIZE`, `MASTER_ADDR` and
    `MASTER_PORT` (`torch.distributed`, gloo on CPU, nccl on GPU). Raises ValueError (one
    sentence) when they are missing or disagree. Once a process; later calls return the same.
    """
    return _framework().start_workers(worker_timeout())


@contextlib.contextmanager
def lost_workers_reported():
    """Turns the framework's error for a worker that stopped answering (its collective failed or
    timed out) into `WorkerLostError`, one sentence that names it."""
    try:
        yield
    except Exception as error:
        describe = _own("lost_worker_message")
        message = describe(error) if describe and worker().count > 1 else None
        if message is None:
            raise
        raise WorkerLostError(message) from None


def exit_after_lost_worker(code=1):
    """Ends this process once its `WorkerLostError` is reported, without meeting the lost worker
    again at exit: JAX's exit handler waits for every process in a shutdown barrier (for
    KERAS_DDPM_WORKER_TIMEOUT), then aborts this one with a stack dump."""
    sys.stdout.flush()
    sys.stderr.flush()
    leave = _own("exit_without_shutdown")
    if leave is not None:
        leave(code)
    sys.exit(code)


def lost_worker_sentence(lost, count, timeout, reason):
    """The sentence of `WorkerLostError`: which of `count` workers were lost (process indices;
    of two, the other one when the framework named none), and why."""
    if not lost and count == 2:
        lost = [1 - worker().index]
    named = ", ".join(map(str, lost)) if lost else "unknown"
    waited = f" within {timeout:g} s ({WORKER_TIMEOUT_VARIABLE})" if timeout else ""
    return (
        f"Lost worker {named} of {count}: it stopped answering{waited}, so this worker stops "
        f"too ({reason})."
    )


def launched_worker():
    """The `Worker` this process is to be, as the launcher's environment (see `start_workers`)
    describes it, read before joining the others; ValueError (one sentence) when the variables
    are missing or disagree."""
    return _framework().launched_worker()


def worker():
    """This process's `Worker`: `Worker(0, 1)` outside a multi-worker run."""
    own = _own("worker")
    return own() if own else Worker()


def outside_distribution(fn):
    """`fn()` where a multi-worker strategy does not reach: the chief samples grids and measures
    FID alone, and a collective there (TensorFlow broadcasts every new variable, JAX compiles
    for all processes' devices) would wait for workers that never join it. TensorFlow and JAX
    keep their strategy per thread, so there `fn` runs in a new thread (with this thread's
    dtype policy); elsewhere, and outside multi-worker runs, it runs here."""
    if worker().count == 1 or not _own("strategy_per_thread"):
        return fn()
    policy = keras.config.dtype_policy()

    def in_thread():
        keras.config.set_dtype_policy(policy)
        return fn()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(in_thread).result()


def worker_dataset(dataset, distribute="none"):
    """The part of `dataset` (batches of the global batch size) that this process trains on.

    Under "multi_worker", process i of n keeps examples [i B/n, (i + 1) B/n) of every global
    batch, so the n processes together train on exactly the batches of one process. PyTorch
    cuts them here; TensorFlow's strategy and JAX's `DataParallel` cut `fit`'s dataset the same
    way themselves.
    """
    own = _own("worker_dataset")
    return own(dataset) if own and distribute == MULTI_WORKER else dataset


# Training and inference.


def after_compile(model):
    """What the backend prepares once `model` is compiled (TensorFlow builds the optimizer)."""
    own = _own("after_compile")
    if own:
        own(model)


def train_step(model, *args):
    """The active backend's training step of `DiffusionModel` `model` (Keras' `train_step`
    arguments: JAX's is stateless, `(state, data)`)."""
    return _framework().train_step(model, *args)


def make_train_function(model, force=False):
    """The backend's own train function for `fit` (`model.train_function`, set and returned),
    or None where Keras' trainer makes its own. JAX: `steps_per_execution` steps as one compiled
    call, the state carried between calls in few flat buffers (`jax.make_train_function`)."""
    own = _own("make_train_function")
    return own(model, force) if own else None


def compile_inference(fn, variables, jit_compile=False):
    """Compiles `fn(*tensors)`, which reads (never writes) `variables`, for repeated calls.

    JAX: `jax.jit` with the variables' values passed in as arguments (not baked in as
    constants, so new weights need no recompilation). TensorFlow: `tf.function`
    (XLA when `jit_compile`). PyTorch: eager under `torch.no_grad()`.
    """
    return _framework().compile_inference(fn, variables, jit_compile=jit_compile)


def compile_loop(fn, variables, jit_compile=None):
    """Compiles a whole sampling loop `fn(x, x0, start, stop, *tensors)` (a `keras.ops.fori_loop`
    over the network, `samplers.reverse_steps`) so that a chain costs one call.

    JAX: `jax.jit` (the loop becomes one `lax.while_loop`; `start`/`stop` are traced, so any
    range of steps reuses the compilation). TensorFlow: `tf.function` with XLA by default
    (`jit_compile`), the Python ints `start`/`stop` passed as tensors so they never retrace.
    PyTorch: eager under `torch.no_grad()` (the loop is a Python loop).
    """
    own = _own("compile_loop")
    if own:
        return own(fn, variables, jit_compile=jit_compile)
    return compile_inference(fn, variables)


def call_network(network, inputs, training=False):
    """`network(inputs, training=training)` (a functional model, `inputs` a list). PyTorch runs
    the graph's layers through their `call` directly where that changes nothing
    (`torch.call_network`: float32 layers, tensor inputs): an eager step's Python time."""
    own = _own("call_network")
    outputs = own(network, inputs, training) if own else None
    return network(inputs, training=training) if outputs is None else outputs


# Layer kernels: where the backend has its own, faster kernel for a layer of `keras_ddpm.layers`
# (PyTorch, on NHWC data without Keras' layout copies), these return its result; None where the
# layer should run Keras' own `call`.


def conv_kernel_initializer(initializer):
    """The initializer for a convolution kernel that `conv2d_nhwc` convolves with: `initializer`,
    or one that stores the same values in the backend's own memory order (PyTorch's
    channels_last kernel)."""
    own = _own("conv_kernel_initializer")
    return own(initializer) if own else initializer


def conv2d_nhwc(x, kernel, strides, padding, bias=None, cache=None):
    """(y, cache): NHWC `x` convolved with Keras variable `kernel` (kh, kw, in, out), `strides`,
    (top, bottom, left, right) zero `padding` and `bias` (a variable or None); `cache` is what
    the previous call returned (the caller keeps it). None where Keras' layer should run."""
    own = _own("conv2d_nhwc")
    return own(x, kernel, strides, padding, bias=bias, cache=cache) if own else None


def dense(x, kernel, bias):
    """x @ kernel + bias over the last axis of `x` (Keras variables), or None."""
    own = _own("dense")
    return own(x, kernel, bias) if own else None


def group_norm_nhwc(x, groups, gamma, beta, epsilon):
    """GroupNorm over the last axis of NHWC `x` with variables `gamma`, `beta`, in float32, or
    None."""
    own = _own("group_norm_nhwc")
    return own(x, groups, gamma, beta, epsilon) if own else None


def attention_nhwc(q, k, v):
    """Single-head softmax(q k^T / sqrt(C)) v over all positions of NHWC `q`, `k`, `v` (an
    output of their shape), or None."""
    own = _own("attention_nhwc")
    return own(q, k, v) if own else None


def upsample_nearest_nhwc(x, factor):
    """Nearest-neighbour upsampling of NHWC `x` by an integer `factor`, or None."""
    own = _own("upsample_nearest_nhwc")
    return own(x, factor) if own else None
