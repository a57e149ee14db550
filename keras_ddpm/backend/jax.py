"""The JAX backend: its stateless training step (`jax.value_and_grad`), `jax.jit` compilation of
inference and sampling loops, `keras.distribution.DataParallel`, and XLA's CPU flags."""

import collections.abc
import functools
import math
import os
import re

import jax
import keras

from keras_ddpm.backend.common import micro_batch
from keras_ddpm.backend.common import unpack

# XLA's CPU compiler (jax 0.10) hands convolutions, matrix products and element-wise ops to the
# YNNPACK library by default, which made this project's CPU forward passes slower (see
# docs/performance.md).
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def configure_xla_cpu():
    """Switches XLA's CPU YNNPACK fusions off, unless XLA_FLAGS already names them."""
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()


def num_replicas():
    """How many devices `distribution_scope()` splits each batch across."""
    return len(keras.distribution.list_devices())


def distribution_scope():
    """`keras.distribution.DataParallel` over all local devices: XLA compiles one program for the
    global batch and splits it (the training step needs nothing else)."""
    return keras.distribution.DataParallel(devices=keras.distribution.list_devices()).scope()


# Several processes: `keras.distribution.initialize` and `DataParallel` over all their devices.

JOB_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def start_workers(timeout):
    """`jax.distributed.initialize` as `keras.distribution.initialize()` calls it from the
    `KERAS_DISTRIBUTION_*` variables (JAX's coordinator at the first address), with `timeout` as
    its heartbeat and shutdown timeouts; this process's `Worker`. Cross-process collectives on a
    CPU go through gloo (JAX's default).

    Keras passes neither timeout: JAX's defaults (100 s, 300 s) kept a worker whose peer was
    killed waiting at exit, in the shutdown barrier, for minutes after it had reported the loss.
    """
    if jax.distributed.is_initialized():
        return worker()
    launched = launched_worker()
    seconds = max(1, math.ceil(timeout))
    jax.distributed.initialize(
        coordinator_address=os.environ[JOB_VARIABLES[0]].split(",")[0],
        num_processes=launched.count,
        process_id=launched.index,
        heartbeat_timeout_seconds=seconds,
        shutdown_timeout_seconds=seconds,
    )
    return launched


def launched_worker():
    """This process's `Worker` from the `KERAS_DISTRIBUTION_*` variables."""
    from keras_ddpm.backend import Worker

    missing = [name for name in JOB_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"--distribute multi_worker on JAX needs {', '.join(JOB_VARIABLES)} "
            f"(docs/multi_worker.md); {', '.join(missing)} is not set."
        )
    addresses, count, index = (os.environ[name] for name in JOB_VARIABLES)
    try:
        count, index = int(count), int(index)
    except ValueError:
        raise ValueError(
            f"KERAS_DISTRIBUTION_NUM_PROCESSES and _PROCESS_ID must be integers. Received: "
            f"{count!r}, {index!r}"
        ) from None
    listed = len(addresses.split(","))
    if not 0 <= index < count or listed not in (1, count):
        raise ValueError(
            f"KERAS_DISTRIBUTION_PROCESS_ID={index} and _NUM_PROCESSES={count} do not describe "
            f"a process of this run ({listed} job address(es)); give every process the same "
            "count and its own id from 0."
        )
    return Worker(index, count)


def lost_worker_message(error):
    """The sentence for a cross-process collective that failed (gloo's broken connection, the
    coordination service's missed heartbeats), or None. A step's collective raises
    `JaxRuntimeError`; the all-gather with which `jax.device_put` checks that every process
    placed the same batch, before the first step, raises it as a `ValueError`."""
    text = str(error)
    signs = ("Gloo", "gloo", "peer", "heartbeat", "UNAVAILABLE", "DEADLINE_EXCEEDED")
    kinds = (jax.errors.JaxRuntimeError, ValueError)
    if not isinstance(error, kinds) or not any(s in text for s in signs):
        return None
    from keras_ddpm.backend import lost_worker_sentence

    tasks = {int(task) for task in re.findall(r"/task:(\d+)", text)}
    lost = sorted(tasks - {jax.process_index()})
    reason = text.strip().splitlines()[0][:200]
    return lost_worker_sentence(lost, jax.process_count(), 0, reason)


def exit_without_shutdown(code):
    """`os._exit`: `jax.distributed.shutdown`, registered to run at exit, would wait for the lost
    worker in its barrier. Files are closed by then (the run's `finally` blocks ran)."""
    os._exit(code)


def worker():
    from keras_ddpm.backend import Worker

    if not jax.distributed.is_initialized():
        return Worker()
    return Worker(jax.process_index(), jax.process_count())


def strategy_per_thread():
    """The distribution (Keras' global state) is thread-local: `outside_distribution`."""
    return True


def multi_worker_replicas():
    return len(keras.distribution.list_devices())


def multi_worker_scope():
    """`DataParallel` over the devices of all processes: Keras gives each process its slice of
    every global batch (`DataParallel.distribute_dataset`), XLA all-reduces the gradients."""
    return distribution_scope()


def train_step(model, state, data):
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    images, labels = unpack(data)
    count = model.config.train.grad_accum

    def stateless(fn, trainable, non_trainable):
        """`fn()` with the model's variables holding these values; (its result, the
        non-trainable values after it: seed generators, ours and dropout's, advance)."""
        mapping = list(zip(model.trainable_variables, trainable))
        mapping += list(zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            result = fn()
        return result, [scope.get_current_value(v) for v in model.non_trainable_variables]

    def loss_fn(trainable, non_trainable, batch):
        loss, updated = stateless(
            lambda: model.diffusion_loss(*batch, training=True), trainable, non_trainable
        )
        # LossScaleOptimizer reads its scale variable: map the optimizer's state too (as Keras'
        # own step does). Micro-batches' gradients add up to their average.
        optimizer_mapping = list(zip(model.optimizer.variables, optimizer_variables))
        with keras.StatelessScope(state_mapping=optimizer_mapping):
            scaled_loss = model.optimizer.scale_loss(loss / count if count > 1 else loss)
        return scaled_loss, (loss, updated)

    inputs, non_trainable = stateless(
        lambda: model.step_inputs(images, labels), trainable, non_trainable
    )
    gradient_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if count == 1:
        (_, (loss, non_trainable)), gradients = gradient_fn(trainable, non_trainable, inputs)
    else:

        def accumulate(index, carry):  # one micro-batch after another: one's activations live
            loss_sum, gradient_sums, non_trainable = carry
            batch = micro_batch(inputs, count, index)
            (_, (loss, non_trainable)), gradients = gradient_fn(trainable, non_trainable, batch)
            sums = [s + g for s, g in zip(gradient_sums, gradients)]
            return loss_sum + loss, sums, non_trainable

        zeros = [jax.numpy.zeros_like(v) for v in trainable]
        start = (jax.numpy.float32(0.0), zeros, list(non_trainable))
        loss_sum, gradients, non_trainable = jax.lax.fori_loop(0, count, accumulate, start)
        loss = loss_sum / count
    trainable, optimizer_variables = model.optimizer.stateless_apply(
        optimizer_variables, gradients, trainable
    )
    non_trainable = list(non_trainable)
    optimizer = model.optimizer
    iterations = optimizer_variables[_index_of(optimizer.iterations, optimizer.variables)]
    decay = model.ema_decay_at(iterations)
    for ema_index, weight_index in model.ema_variable_pairs():
        non_trainable[ema_index] = model.ema_update_value(
            non_trainable[ema_index], trainable[weight_index], decay
        )
    metrics_variables = model.loss_tracker.stateless_update_state(metrics_variables, loss)
    logs = {"loss": model.loss_tracker.stateless_result(metrics_variables)}
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def _index_of(variable, variables):
    return next(i for i, v in enumerate(variables) if v is variable)


def compile_inference(fn, variables, jit_compile=False):
    """`jax.jit` with the variables' values passed in as arguments (not baked in as constants, so
    new weights need no recompilation). A sampling loop becomes one `lax.while_loop`, its
    `start`/`stop` traced, so any range of steps reuses the compilation."""

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    compiled = jax.jit(pure)
    return lambda *args: compiled([_local(v.value) for v in variables], *args)


def _local(value):
    """`value`, or a copy on this process's device where it spans several processes (a
    multi-worker run's replicated weights): the chief alone samples, outside the collective."""
    if value.is_fully_addressable:
        return value
    return jax.device_put(value.addressable_data(0), jax.local_devices()[0])


# Mixed precision.


@functools.cache
def compute_dtype_problem(dtype):
    """Why JAX cannot train the network in `dtype` on its default device, as one sentence; None
    where it can. XLA's CPU compiler has no float16 matrix product that accumulates in float32,
    which Keras' attention asks for. The probe: a convolution, a dense product and attention in
    `dtype`, differentiated under `jax.jit` as a training step is."""
    if dtype == "float32":
        return None

    def loss(kernel, weights, x):
        h = keras.ops.matmul(keras.ops.conv(x, kernel, padding="same"), weights)
        q = keras.ops.reshape(h, (1, 16, 1, 8))
        return keras.ops.sum(keras.ops.cast(keras.ops.dot_product_attention(q, q, q), "float32"))

    key = jax.random.PRNGKey(0)
    arrays = [jax.random.normal(key, shape).astype(dtype) for shape in ((3, 3, 8, 8), (8, 8))]
    arrays.append(jax.random.normal(key, (1, 4, 4, 8)).astype(dtype))
    try:
        jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*arrays)
    except (ValueError, RuntimeError, NotImplementedError) as error:
        reason = str(error).strip().splitlines()[0]
        platform = jax.devices()[0].platform
        return f"JAX {jax.__version__} cannot train in {dtype} on this {platform} ({reason})."
    return None


# Several steps per compiled call, and the state packed into few arrays between calls.

# Whether `make_train_function` carries the training state between calls packed into one flat
# buffer per dtype (`_Layout`), 3 arrays for the tiny preset in place of 580; off (the default),
# it hands Keras' four lists of arrays back and forth as Keras' own train function does. Off
# until measured on a GPU: on XLA's CPU backend the packed program took longer to compile, and
# unpacking at a sync is one more compilation (docs/performance.md), since slicing each variable
# out of a buffer and concatenating the results is a copy per array inside the program.
PACK_STATE = False
# How many steps each iteration of the on-device loop runs (`lax.scan`'s `unroll`); None: all of
# them (no loop) on XLA's CPU backend, where a step inside the loop ran slower than a step on its
# own (docs/performance.md), and 1 elsewhere, where unrolling would multiply the compile time.
SCAN_UNROLL = None


def make_train_function(model, force=False):
    """Sets `model.train_function` to one compiled call per `steps_per_execution` batches and
    returns it; None where Keras' own train function is kept (run eagerly, no jit, Flax NNX, or
    one step a call with the state unpacked).

    Keras' JAX trainer (keras/src/backend/jax/trainer.py, Keras 3.15: `_make_function`) runs
    `steps_per_execution` batches as a Python loop of jitted single steps, and every call hands
    over the four state lists (trainable, non-trainable, optimizer and metrics variables) as
    separate arrays. Here the iterator's next N batches go into one `jax.jit` call, a
    `lax.scan` of `model.train_step` over them (unrolled on a CPU, `SCAN_UNROLL`; a short last
    group, where the iterator runs out, is a scan over fewer: a second compilation); the state
    is donated, as Keras donates it. Callbacks see one `on_train_batch_end` per call, as with
    Keras' TensorFlow trainer.

    With `PACK_STATE` (off by default) and no distribution set, the state crosses the host
    boundary as one flat buffer per dtype: the call returns `_PackedPart`s in place of Keras'
    four lists, which Keras' `fit` keeps as its state (`_jax_state`) and passes back to the next
    call unchanged; only where Keras reads them (`jax_state_sync`: a callback asking for
    `model`, the end of an epoch) are they unpacked into arrays, by one more compiled call.
    """
    if model.train_function is not None and not force:
        return model.train_function
    count = model.steps_per_execution
    distributed = keras.distribution.distribution() is not None
    pack = PACK_STATE and not distributed
    if model.run_eagerly or not model.jit_compile or keras.config.is_nnx_enabled():
        return None
    if count == 1 and not pack:
        return None
    out_shardings = None
    if distributed:  # the variables keep their layouts, as in Keras' `make_train_function`
        out_shardings = (None, _state_shardings(model))

    def steps(state, batches):
        """`len(batches)` training steps, one after another in one program."""
        stacked = jax.tree_util.tree_map(lambda *xs: jax.numpy.stack(xs), *batches)

        def body(state, data):
            logs, new_state = model.train_step(state, data)
            # The carry keeps its structure and dtypes (Python floats would make weak types).
            new_state = tuple(
                [jax.numpy.asarray(new, old.dtype) for new, old in zip(new_part, old_part)]
                for new_part, old_part in zip(new_state, state)
            )
            return new_state, logs

        state = tuple(list(part) for part in state)
        unroll = SCAN_UNROLL
        if unroll is None:
            unroll = len(batches) if jax.default_backend() == "cpu" else 1
        state, logs = jax.lax.scan(body, state, stacked, unroll=unroll)
        return jax.tree_util.tree_map(lambda x: x[-1], logs), state

    if pack:
        layouts = {}

        def packed_steps(packed, batches):  # the layout is static: `_Packed`'s pytree aux data
            logs, state = steps(packed.layout.unpack(packed.buffers), batches)
            return logs, _Packed(packed.layout, packed.layout.pack(state))

        jitted = jax.jit(packed_steps, donate_argnums=0)

        def run(state, batches):
            if isinstance(state[0], _PackedPart):  # what the previous call returned
                packed = state[0].packed
            else:  # Keras' lists of arrays: at the start of `fit`, or after a sync
                key = _Layout.key_of(state)
                if key not in layouts:
                    layouts[key] = _Layout(state)
                packed = layouts[key].pack_arrays(state)
            logs, packed = train_function.compiled(packed, batches)
            return logs, packed.parts()

    else:
        jitted = jax.jit(steps, donate_argnums=0, out_shardings=out_shardings)

        def run(state, batches):
            return train_function.compiled(state, batches)

    def train_function(state, iterator):
        batches = [next(iterator)]  # StopIteration: the epoch is over (Keras' `fit` catches it)
        for _ in range(count - 1):
            try:
                batches.append(next(iterator))
            except StopIteration:  # a short last group
                break
        logs = None
        for group in _uniform_runs(batches):  # a smaller last batch of an array dataset
            logs, state = run(state, group)
        return logs, state

    # The jitted function each call runs, once per group of batches of one shape: its arguments
    # are the arrays that cross the host boundary (tests count them, and its calls).
    train_function.compiled = jitted
    model.train_function = train_function
    return train_function


def _state_shardings(model):
    """The shardings of Keras' four state lists (as `JAXTrainer._get_state_sharding_spec`)."""
    optimizer_variables = model.optimizer.variables if model.optimizer is not None else []
    return tuple(
        [v.value.sharding for v in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            optimizer_variables,
            model.metrics_variables,
        )
    )


def _uniform_runs(batches):
    """`batches` cut into runs of consecutive batches whose arrays have the same shapes (so each
    run stacks)."""

    def shapes(batch):
        return [(x.shape, x.dtype) for x in jax.tree_util.tree_leaves(batch)]

    runs = [[batches[0]]]
    for batch in batches[1:]:
        if shapes(batch) == shapes(runs[-1][0]):
            runs[-1].append(batch)
        else:
            runs.append([batch])
    return runs


class _Layout:
    """Where each array of Keras' four state lists lies in one flat buffer per dtype."""

    def __init__(self, state):
        self.lengths = tuple(len(part) for part in state)
        self.dtypes = sorted({str(x.dtype) for part in state for x in part})
        offsets = dict.fromkeys(self.dtypes, 0)
        self.places = []  # (buffer index, offset, shape), part after part
        for part in state:
            for x in part:
                dtype = str(x.dtype)
                self.places.append((self.dtypes.index(dtype), offsets[dtype], tuple(x.shape)))
                offsets[dtype] += math.prod(x.shape)
        self.sizes = [offsets[dtype] for dtype in self.dtypes]
        self.pack_arrays = jax.jit(lambda state: _Packed(self, self.pack(state)))
        self.unpack_arrays = jax.jit(self.unpack)

    @staticmethod
    def key_of(state):
        return tuple(tuple((tuple(x.shape), str(x.dtype)) for x in part) for part in state)

    def pack(self, state):
        """The flat buffers of `state` (inside a compiled function)."""
        pieces = [[] for _ in self.dtypes]
        leaves = [x for part in state for x in part]
        for x, (buffer, _, _) in zip(leaves, self.places):
            pieces[buffer].append(jax.numpy.ravel(x))
        return tuple(
            jax.numpy.concatenate(p) if p else jax.numpy.zeros((0,), dtype)
            for p, dtype in zip(pieces, self.dtypes)
        )

    def unpack(self, buffers):
        """Keras' four lists of arrays, sliced out of `buffers` (inside a compiled function)."""
        leaves = [
            jax.lax.slice(buffers[buffer], (offset,), (offset + math.prod(shape),)).reshape(shape)
            for buffer, offset, shape in self.places
        ]
        parts, start = [], 0
        for length in self.lengths:
            parts.append(leaves[start : start + length])
            start += length
        return tuple(parts)


@jax.tree_util.register_pytree_node_class
class _Packed:
    """The training state as `_Layout` packs it: `buffers`, one flat array per dtype."""

    def __init__(self, layout, buffers):
        self.layout = layout
        self.buffers = buffers
        self._unpacked = None

    def tree_flatten(self):
        return tuple(self.buffers), self.layout

    @classmethod
    def tree_unflatten(cls, layout, buffers):
        return cls(layout, tuple(buffers))

    def parts(self):
        """Four `_PackedPart`s in place of Keras' four state lists."""
        return tuple(_PackedPart(self, index) for index in range(len(self.layout.lengths)))

    def unpacked(self):
        """Keras' four lists of arrays (one compiled call, made once)."""
        if self._unpacked is None:
            self._unpacked = self.layout.unpack_arrays(self.buffers)
        return self._unpacked


class _PackedPart(collections.abc.Sequence):
    """One of Keras' four state lists, read from a `_Packed` state when indexed or iterated (as
    `JAXTrainer.jax_state_sync` zips it with the variables); a pytree of no arrays (Keras' state
    structure stays a tuple of four items)."""

    def __init__(self, packed, index):
        self.packed = packed
        self.index = index

    def __len__(self):
        return self.packed.layout.lengths[self.index]

    def __getitem__(self, item):
        return self.packed.unpacked()[self.index][item]
