"""The TensorFlow backend: its training step (`tf.GradientTape`, `tf.distribute` replicas), its
compilation of inference and sampling loops (`tf.function`, XLA), `MirroredStrategy`, and
tf.data's device."""

import json
import os
import re

import tensorflow as tf

from keras_ddpm.backend import internals
from keras_ddpm.backend.common import clipping_switched_off
from keras_ddpm.backend.common import micro_batch
from keras_ddpm.backend.common import unpack


def default_jit_compile():
    """XLA with a GPU only. On a CPU, XLA made the tiny preset's first `fit` slower to compile
    and its steps slower (docs/performance.md)."""
    return bool(tf.config.list_physical_devices("GPU"))


def tensorflow_for_data():
    """TensorFlow itself: it is the backend, so tf.data may share its GPU."""
    return tf


def prefetch_device():
    """The GPU ("/GPU:0") where there is one and no `tf.distribute` strategy (a strategy places
    batches itself); None otherwise."""
    if not tf.config.list_logical_devices("GPU") or tf.distribute.has_strategy():
        return None
    return "/GPU:0"


def replica_context():
    """(replica id, number of replicas) inside a `tf.distribute` step with several replicas."""
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        return context.replica_id_in_sync_group, context.num_replicas_in_sync
    return 0, 1


def _strategy_devices():
    """All GPUs, or all logical CPUs where there is none."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [device.name for device in devices]


def num_replicas():
    """How many devices `distribution_scope()` splits each batch across."""
    return len(_strategy_devices())


def distribution_scope():
    """`tf.distribute.MirroredStrategy` over all GPUs (or all logical CPUs)."""
    return tf.distribute.MirroredStrategy(_strategy_devices()).scope()


# Several processes: MultiWorkerMirroredStrategy, configured by TF_CONFIG.

_workers = {}  # "strategy", "worker": set once a process by `start_workers`


def start_workers(timeout):
    """`tf.distribute.MultiWorkerMirroredStrategy` of the cluster that `TF_CONFIG` describes
    (its collectives time out after `timeout` seconds); this process's `Worker`."""
    if "worker" in _workers:
        return _workers["worker"]
    launched = launched_worker()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    _workers["strategy"] = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    chiefs = len(json.loads(os.environ["TF_CONFIG"])["cluster"].get("chief", []))
    _workers.update(worker=launched, timeout=timeout, chiefs=chiefs)
    return launched


def launched_worker():
    """This task's `Worker` from TF_CONFIG: its index among all tasks (a chief task first)."""
    from keras_ddpm.backend import Worker

    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "--distribute multi_worker on TensorFlow needs TF_CONFIG, the cluster and this "
            "worker's task as JSON (docs/multi_worker.md); it is not set."
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        jobs = [(job, len(cluster.get(job, []))) for job in ("chief", "worker")]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(
            'TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", ...]}, "task": '
            f'{{"type": "worker", "index": 0}}}}. Received: {text!r}'
        ) from None
    sizes = dict(jobs)
    count = sum(sizes.values())
    if kind not in sizes or not 0 <= index < sizes[kind]:
        raise ValueError(
            f"TF_CONFIG names task {kind}:{index}, but its cluster has {sizes['chief']} chief and "
            f"{sizes['worker']} worker tasks; give every process the same cluster and its own "
            "index."
        )
    return Worker(index if kind == "chief" else sizes["chief"] + index, count)


def lost_worker_message(error):
    """The sentence for a collective that failed because a task stopped answering (TensorFlow's
    coordination service names the tasks that stopped sending heartbeats), or None."""
    if not isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)):
        return None
    from keras_ddpm.backend import lost_worker_sentence

    # The tasks the error names (unhealthy ones, the remote target of a failed call), as process
    # indices (a chief task first), less this one.
    text = str(error)
    chiefs = _workers["chiefs"]
    named = re.findall(r"/job:(chief|worker)/replica:\d+/task:(\d+)", text)
    tasks = {int(task) + (chiefs if job == "worker" else 0) for job, task in named}
    lost = sorted(tasks - {_workers["worker"].index})
    reason = f"{type(error).__name__} in a collective"
    return lost_worker_sentence(lost, _workers["worker"].count, _workers["timeout"], reason)


def worker():
    from keras_ddpm.backend import Worker

    return _workers.get("worker", Worker())


def _strategy():
    if "strategy" not in _workers:
        raise RuntimeError("Call backend.start_workers() before a multi_worker scope.")
    return _workers["strategy"]


def strategy_per_thread():
    """The distribution (Keras' global state) is thread-local: `outside_distribution`."""
    return True


def multi_worker_replicas():
    return _strategy().num_replicas_in_sync


def multi_worker_scope():
    """The strategy's scope: `fit` splits each global batch across all workers' replicas (its
    DATA auto-sharding: worker i keeps its slice of each batch) and the step all-reduces."""
    return _strategy().scope()


def worker_dataset(dataset):
    """`dataset` sharded by DATA, not FILE: each worker keeps its slice of every global batch."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def after_compile(model):
    """Builds the optimizer now where no `tf.distribute` strategy holds the model.

    Otherwise Keras builds it inside the first traced step; creating variables while tracing
    makes TensorFlow trace the step twice, about twice the time to the first step.
    """
    if "strategy" in _workers and internals.distribute_strategy(model) is _workers["strategy"]:
        # A model created under a strategy makes `fit` draw one batch from a throwaway iterator
        # of its dataset (Keras' symbolic build) before the iterator it trains on; the input
        # pipeline reshuffles for every new iterator, so the workers would train on its second
        # order and a one-process run on its first. Built here instead, as without a strategy;
        # `fit` runs under the scope that is open (`multi_worker_scope`).
        internals.detach_from_strategy(model)
    if internals.distribute_strategy(model) is None:
        model.optimizer.build(model.trainable_variables)


def train_step(model, data):
    images, labels = unpack(data)
    _, replicas = replica_context()
    variables = model.trainable_variables
    inputs = model.step_inputs(images, labels)
    count = model.config.train.grad_accum
    # tf.distribute sums the replicas' gradients: divide so they average (Keras' convention);
    # micro-batches' gradients are averaged the same way.
    divisor = replicas * count

    def loss_and_gradients(batch):
        with tf.GradientTape() as tape:
            loss = model.diffusion_loss(*batch, training=True)
            scaled_loss = model.optimizer.scale_loss(loss / divisor if divisor > 1 else loss)
        return loss, tape.gradient(scaled_loss, variables)

    if count == 1:
        loss, gradients = loss_and_gradients(inputs)
    else:

        def accumulate(index, carry):  # one micro-batch after another: one's activations live
            loss_sum, gradient_sums = carry
            loss, gradients = loss_and_gradients(micro_batch(inputs, count, index))
            gradients = [tf.convert_to_tensor(g) for g in gradients]  # IndexedSlices -> dense
            return loss_sum + loss, [s + g for s, g in zip(gradient_sums, gradients)]

        zeros = [tf.zeros_like(v) for v in variables]
        loss_sum, gradients = tf.while_loop(
            lambda index, _: index < count,
            lambda index, carry: (index + 1, accumulate(index, carry)),
            (tf.constant(0), (tf.constant(0.0), zeros)),
            parallel_iterations=1,
        )[1]
        loss = loss_sum / count
    if replicas > 1:
        _apply_clipped_across_replicas(model.optimizer, gradients, variables, replicas)
    else:
        model.optimizer.apply(gradients, variables)
    model.update_ema()
    model.loss_tracker.update_state(loss)
    result = model.loss_tracker.result()
    if "strategy" in _workers:
        # Keras 3 reduces a multi-worker step's logs with `strategy.reduce("MEAN", v, axis=0)`,
        # which fails on a scalar (tensorflow/tensorflow#72388): a vector of one it averages.
        result = tf.reshape(result, (1,))
    return {"loss": result}


def _apply_clipped_across_replicas(optimizer, gradients, variables, replicas):
    """Global-norm clipping of the replicas' summed gradient, then `optimizer.apply`.

    Keras' optimizer clips each replica's gradient before tf.distribute sums them, so
    `global_clipnorm` would bound the wrong norm (and a step on N devices would differ
    from one on 1 device). Here the sum is clipped, and the optimizer (its clipping
    switched off while the step is traced) sums the replicas' now equal gradients / N.
    """
    # LossScaleOptimizer: the clipping is its inner optimizer's.
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    clip = inner.global_clipnorm
    if not clip:
        optimizer.apply(gradients, variables)
        return
    gradients = [tf.convert_to_tensor(g) for g in gradients]  # IndexedSlices (embeddings) -> dense
    summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)
    scale = optimizer.dynamic_scale if inner is not optimizer else 1.0  # gradients are loss-scaled
    summed, _ = tf.clip_by_global_norm(summed, clip * scale)
    with clipping_switched_off(inner):
        optimizer.apply([g / replicas for g in summed], variables)


def compile_inference(fn, variables, jit_compile=False):
    """`tf.function` (XLA when `jit_compile`)."""
    return tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)


def compile_loop(fn, variables, jit_compile=None):
    """`tf.function` with XLA by default (`jit_compile`), the Python ints `start`/`stop` passed
    as tensors so that they never retrace."""
    compiled = compile_inference(fn, variables, True if jit_compile is None else jit_compile)

    def with_tensor_bounds(x, x0, start, stop, *args):
        return compiled(x, x0, tf.constant(start, tf.int32), tf.constant(stop, tf.int32), *args)

    return with_tensor_bounds
