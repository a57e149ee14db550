"""The PyTorch backend: its eager training step (clipping and Adam as multi-tensor and fused torch
kernels, the tensors they touch gathered once in a step plan), eager inference under
`torch.no_grad()`, layer kernels on NHWC data, seeds and the dtypes this machine can train in.
"""

import collections
import datetime
import functools
import math
import operator
import os
import sys
import time

import keras
import numpy as np
import torch

from keras_ddpm.backend import internals
from keras_ddpm.backend.common import clipping_switched_off
from keras_ddpm.backend.common import micro_batch
from keras_ddpm.backend.common import unpack


def supports_steps_per_execution():
    return False  # Keras' PyTorch trainer runs one step per call


def seed_generator(seed=None):
    """Keras draws number k of `SeedGenerator(s)` with the integer s + k here: the seed is first
    spread over 31 bits by NumPy's `SeedSequence` hash, so that neighbouring seeds do not share a
    stream shifted by one draw."""
    if seed is not None:
        seed = int(np.random.SeedSequence(seed).generate_state(1)[0] >> 1)
    return keras.random.SeedGenerator(seed)


def compile_inference(fn, variables, jit_compile=False):
    """Eager, under `torch.no_grad()` (a sampling loop is a Python loop)."""

    def no_grad(*args):
        with torch.no_grad():
            return fn(*args)

    return no_grad


# Several processes: torch.distributed, launched by torchrun (gloo on CPU, nccl on GPU).

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_workers = {}  # "store", "timeout": set once a process by `start_workers`


def start_workers(timeout):
    """`torch.distributed.init_process_group` from torchrun's variables (collectives time out
    after `timeout` seconds); this process's `Worker`. On a GPU, this process takes GPU
    LOCAL_RANK."""
    if torch.distributed.is_initialized():
        return worker()
    launched = launched_worker()
    rank, count = launched.index, launched.count
    port = int(os.environ["MASTER_PORT"])
    wait = datetime.timedelta(seconds=timeout)
    # The rendezvous store, made here (not by init_method="env://") so that a lost worker can be
    # named (`_lost_workers`); under torchrun its agent holds it at MASTER_ADDR:MASTER_PORT.
    hosts = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    store = torch.distributed.TCPStore(
        os.environ["MASTER_ADDR"], port, count, is_master=hosts, timeout=wait
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kind = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(
        kind, store=store, rank=rank, world_size=count, timeout=wait
    )
    _workers.update(store=store, timeout=timeout)
    return worker()


def launched_worker():
    """This process's `Worker` from torchrun's variables."""
    from keras_ddpm.backend import Worker

    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(
            "--distribute multi_worker on PyTorch needs torchrun's RANK, WORLD_SIZE, MASTER_ADDR "
            f"and MASTER_PORT (launch with torchrun, docs/multi_worker.md); {', '.join(missing)} "
            "is not set."
        )
    rank, count, port = (os.environ[name] for name in ("RANK", "WORLD_SIZE", "MASTER_PORT"))
    try:
        rank, count, _ = int(rank), int(count), int(port)
    except ValueError:
        raise ValueError(
            f"RANK, WORLD_SIZE and MASTER_PORT must be integers. Received: {rank!r}, {count!r}, "
            f"{port!r}"
        ) from None
    if not 0 <= rank < count:
        raise ValueError(
            f"RANK={rank} and WORLD_SIZE={count} do not describe a process of this run; give "
            "every process the same WORLD_SIZE and its own RANK from 0."
        )
    return Worker(rank, count)


def worker():
    from keras_ddpm.backend import Worker

    if not torch.distributed.is_initialized():
        return Worker()
    return Worker(torch.distributed.get_rank(), torch.distributed.get_world_size())


def replica_context():
    """(rank, world size) in a multi-worker run: each process draws for the global batch and
    keeps its slice (`DiffusionModel.training_draws`)."""
    current = worker()
    return current.index, current.count


def multi_worker_replicas():
    return worker().count


def multi_worker_scope():
    """Nothing to enter: the training step all-reduces the gradients itself (`_all_reduce`)."""
    import contextlib

    return contextlib.nullcontext()


def worker_dataset(dataset):
    """Slice `rank` of each global batch of a tf.data `dataset` (as Keras' `DataParallel` cuts
    one for JAX): rebatched into WORLD_SIZE parts, every WORLD_SIZE-th kept."""
    current = worker()
    if current.count == 1:
        return dataset
    if not hasattr(dataset, "rebatch"):
        raise ValueError(
            "--distribute multi_worker on PyTorch shards tf.data pipelines; install TensorFlow "
            "for the input pipeline."
        )
    first = dataset.element_spec[0] if isinstance(dataset.element_spec, tuple) else None
    global_batch = (first or dataset.element_spec).shape[0]
    local = dataset.rebatch(global_batch // current.count)
    return local.shard(current.count, current.index)


def _all_reduce_mean(tensors):
    """Averages `tensors` (gradients and the loss) over all processes in place, in one flat
    all-reduce; `WorkerLostError` naming the lost workers when one stops answering."""
    flat = torch.cat([tensor.reshape(-1) for tensor in tensors])
    try:
        torch.distributed.all_reduce(flat)
    except RuntimeError as error:
        _raise_lost_worker(error)
    flat /= torch.distributed.get_world_size()
    start = 0
    for tensor in tensors:
        tensor.copy_(flat[start : start + tensor.numel()].view(tensor.shape))
        start += tensor.numel()


def _broadcast_from_chief(tensors):
    """Gives every process the chief's values (as DistributedDataParallel does at its start)."""
    try:
        for tensor in tensors:
            torch.distributed.broadcast(tensor, 0)
    except RuntimeError as error:
        _raise_lost_worker(error)


def _raise_lost_worker(error):
    from keras_ddpm.backend import WorkerLostError
    from keras_ddpm.backend import lost_worker_sentence

    reason = str(error).strip().splitlines()[0]
    lost = _lost_workers()
    message = lost_worker_sentence(lost, worker().count, _workers["timeout"], reason)
    raise WorkerLostError(message) from None


def _lost_workers(wait=3.0):
    """The ranks that do not check in at the rendezvous store within `wait` seconds (the chief's,
    0, where the store itself is gone with it)."""
    store, rank, count = _workers["store"], worker().index, worker().count
    try:
        store.set(f"keras_ddpm/alive/{rank}", "1")
        deadline = time.monotonic() + min(wait, _workers["timeout"])
        while True:
            lost = [i for i in range(count) if not store.check([f"keras_ddpm/alive/{i}"])]
            if not lost or time.monotonic() > deadline:
                return lost
            time.sleep(0.1)
    except (RuntimeError, OSError):  # the store lived in the chief (or torchrun's agent)
        return [0]


# The training step.
#
# The fused step (Adam or AdamW through `torch._fused_adam_`) reads no device value on the host:
# the optimizer step, the learning rate, Adam's bias corrections and the EMA decay are Python
# numbers computed from a step counter kept on the host (`_AdamPlan.iterations`), and
# `optimizer.iterations` is incremented on the device. On CUDA each such read (`float(tensor)`)
# waits for the GPU to finish all the work queued before it.


class _StepScalars(collections.namedtuple("_StepScalars", "step_size ema_weight")):
    """The numbers that change from step to step: Adam's step size lr sqrt(1 - b2^t) / (1 - b1^t)
    and the EMA's interpolation weight 1 - decay; Python floats for an eager step, 0-dim device
    tensors (filled before each replay) for a captured one."""


def train_step(model, data):
    images, labels = unpack(data)
    inputs = model.step_inputs(images, labels)
    variables = model.trainable_variables
    plan = _step_plan(model, variables)
    if not plan.adam.fused:
        return _keras_update_step(model, inputs, plan)
    step = plan.adam.iterations()  # this update's number, 0-based
    scalars = _StepScalars(
        _adam_step_size(model.optimizer, plan.adam, step),
        1.0 - ema_decay_on_host(model.config.train, step + 1),
    )
    loss = plan.graph.run(plan, inputs, scalars) if plan.graph is not None else None
    if loss is None:
        loss = _step_body(model, plan, inputs, scalars)
    plan.adam.counted()
    model.loss_tracker.update_state(loss)
    return {"loss": model.loss_tracker.result()}


def _forward_backward(model, plan, inputs):
    """The loss of a step and its gradients in each weight's `.grad` (`grad_accum` micro-batches:
    backward() adds each one's gradients to .grad, their sum / count)."""
    for weight in plan.adam.weights:  # model.zero_grad() walks every module for them
        weight.grad = None
    count = model.config.train.grad_accum
    if count == 1:
        loss = model.diffusion_loss(*inputs, training=True)
        model.optimizer.scale_loss(loss).backward()
        return loss.detach()
    losses = []
    for index in range(count):
        loss = model.diffusion_loss(*micro_batch(inputs, count, index), training=True)
        model.optimizer.scale_loss(loss / count).backward()
        losses.append(loss.detach())
    return torch.stack(losses).mean()


def _mean_over_workers(loss, gradients):
    """As DistributedDataParallel does: the mean of all processes' gradients and losses."""
    if worker().count == 1:
        return loss
    loss = loss.reshape(1)
    _all_reduce_mean([*gradients, loss])
    return loss[0]


def _step_body(model, plan, inputs, scalars):
    """One fused training step (forward, loss, backward, clipping, Adam, EMA, iterations + 1),
    with no host read of a device value: the loss, as a device tensor. The same function runs
    eagerly and under CUDA graph capture (`_GraphedStep`); `scalars`: `_StepScalars`."""
    loss = _forward_backward(model, plan, inputs)
    gradients = [weight.grad for weight in plan.adam.weights]
    with torch.no_grad():
        loss = _mean_over_workers(loss, gradients)
        _clip(model.optimizer, gradients)
        plan.adam.apply_weight_decay(plan.adam.variables)  # AdamW's decoupled decay, as Keras'
        _fused_update(model.optimizer, gradients, plan.adam, scalars.step_size)
        _increment(model.optimizer.iterations)
        # `DiffusionModel.update_ema`, as one multi-tensor kernel.
        internals.foreach_lerp_(plan.ema_weights, plan.network_weights, scalars.ema_weight)
    return loss


def _keras_update_step(model, inputs, plan):
    """The step for optimizers `_fused_update` leaves to Keras (another optimizer, loss scaling):
    Keras' update after our clipping, and the EMA decay read from `optimizer.iterations` as
    Keras increments it."""
    loss = _forward_backward(model, plan, inputs)
    gradients = [weight.grad for weight in plan.adam.weights]
    with torch.no_grad():
        loss = _mean_over_workers(loss, gradients)
        _apply_gradients(model.optimizer, gradients, plan.adam.variables, plan.adam)
        decay = float(model.ema_decay_at(model.optimizer.iterations))
        internals.foreach_lerp_(plan.ema_weights, plan.network_weights, 1.0 - decay)
    model.loss_tracker.update_state(loss)
    return {"loss": model.loss_tracker.result()}


def _step_plan(model, variables):
    """The tensors a training step reads and updates, gathered once and kept on the model (walking
    Keras' layers and variable properties for them at every step costs a noticeable part of a
    step); gathered again when the optimizer, its state or the trainable variables change."""
    plan = getattr(model, "_torch_step_plan", None)
    if plan is None or not plan.adam.matches(model.optimizer, variables):
        plan = model._torch_step_plan = _StepPlan(model, variables)
        if worker().count > 1:
            with torch.no_grad():
                _broadcast_from_chief(plan.network_weights + plan.ema_weights)
    return plan


class _StepPlan:
    def __init__(self, model, variables):
        self.adam = _AdamPlan(model.optimizer, variables)
        self.ema_weights = [weight.value for weight in model.ema_network.weights]
        self.network_weights = [weight.value for weight in model.network.weights]
        self.graph = _GraphedStep.for_model(model, self)


class _AdamPlan:
    """The weights and, where `_fused_update` applies, Adam's moments, as torch tensors; the
    optimizer step as a Python int (`iterations`).

    Builds the optimizer if needed, and gives each moment its weight's memory layout:
    `torch._fused_adam_` walks a weight and its moments as flat memory, and a convolution kernel
    is kept in torch's layout (`ConvKernelLayout`).
    """

    def __init__(self, optimizer, variables):
        if not optimizer.built:
            optimizer.build(variables)
        # The objects themselves, not their ids: a new optimizer may reuse a freed one's id.
        self.optimizer, self.variables = optimizer, list(variables)
        self.num_optimizer_variables = len(optimizer.variables)
        self.weights = [v.value for v in variables]
        self.kernel = internals.fused_adam()
        self.fused = False
        self._count = self._count_tensor = self._count_version = None
        self._learning_rate = None  # (tensor, version, value) of a learning-rate variable
        if self.kernel is None or not _fusable_adam(optimizer, variables):
            return
        adam = internals.adam_internals(optimizer, variables)
        if adam is None:
            return
        self.apply_weight_decay = adam.apply_weight_decay
        self.momentums = _moment_views(adam.momentums, self.weights)
        self.velocities = _moment_views(adam.velocities, self.weights)
        self.flat_weights = [_flat(weight) for weight in self.weights]
        # A step count at which torch's kernel's bias corrections 1 - beta^step are exactly 1
        # (beta^step underflows to 0 for any beta < 1, in float32 as in float64): the kernel then
        # takes the step size as its learning rate, and Keras' epsilon as its own
        # (`_fused_update`). One tensor, made once: the kernel reads it and never writes it.
        step = torch.full((), _SATURATED_STEP, device=self.weights[0].device)
        self.state_steps = [step] * len(self.weights)
        self.fused = self.momentums is not None and self.velocities is not None

    def matches(self, optimizer, variables):
        """Whether this plan still describes `optimizer` updating `variables`."""
        return (
            self.optimizer is optimizer
            and len(optimizer.variables) == self.num_optimizer_variables
            and len(variables) == len(self.variables)
            and all(map(operator.is_, variables, self.variables))
        )

    def iterations(self):
        """`optimizer.iterations` as a Python int: read from the device only where it may have
        changed since this plan's last step (`counted`), i.e. where its tensor was replaced or
        written in place: torch's version counter of the tensor, which every Keras `assign`
        bumps (a checkpoint restore, a loss-scaling or Keras update, anyone's `assign`;
        `Variable._direct_assign` is `copy_`, Keras 3.15) and a CUDA graph's replay does not
        (a replay runs kernels, not torch's in-place bookkeeping)."""
        value = self.optimizer.iterations.value
        version = internals.tensor_version(value)  # None: untested torch, read every step
        if (
            self._count is None
            or version is None
            or value is not self._count_tensor
            or version != self._count_version
        ):
            self._count = int(keras.ops.convert_to_numpy(value))
        self._count_tensor, self._count_version = value, version
        return self._count

    def counted(self):
        """After a step that added 1 to `optimizer.iterations` on the device: the host counter
        follows, and the tensor's current version becomes the one `iterations` expects."""
        self._count += 1
        value = self.optimizer.iterations.value
        self._count_tensor, self._count_version = value, internals.tensor_version(value)

    def learning_rate(self, step):
        """The learning rate of update number `step` (0-based), as Keras' Adam computes it
        (`optimizer.learning_rate` at `iterations` = `step`), on the host: a schedule by
        `learning_rate_on_host`, a learning-rate variable (a number given to Keras) read again
        only after a write to it (its version counter, as in `iterations`)."""
        schedule = internals.learning_rate_schedule(self.optimizer)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return learning_rate_on_host(schedule, step)
        if isinstance(schedule, keras.Variable):
            value = schedule.value
            version = internals.tensor_version(value)
            kept = self._learning_rate
            if version is None or kept is None or kept[:2] != (value, version):
                kept = self._learning_rate = (
                    value,
                    version,
                    float(keras.ops.convert_to_numpy(value)),
                )
            return kept[2]
        return float(schedule() if callable(schedule) else schedule)


# 2^100: representable in float32; beta^(2^100) == 0.0 for every float beta in [0, 1).
_SATURATED_STEP = 2.0**100


def _adam_step_size(optimizer, plan, step):
    """lr sqrt(1 - b2^t) / (1 - b1^t) with t = step + 1: Keras' Adam step size ("alpha", its
    bias corrections folded in), in float64 (Keras computes the powers in float32)."""
    t = step + 1
    beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
    return plan.learning_rate(step) * math.sqrt(1.0 - beta_2**t) / (1.0 - beta_1**t)


def _f32(value):
    return np.float32(value)


def learning_rate_on_host(schedule, step):
    """`float(schedule(step))` for update number `step` (0-based) without the device: our
    `LinearWarmup` and Keras' `CosineDecay` (keras/src/optimizers/schedules/
    learning_rate_schedule.py, Keras 3.15) by the same float32 arithmetic in NumPy; any other
    schedule evaluated by Keras on the CPU (a few small torch ops, no device read)."""
    from keras_ddpm.optimizers import LinearWarmup

    if type(schedule) is LinearWarmup:
        if not schedule.warmup_steps:
            return float(_f32(schedule.learning_rate))
        fraction = np.minimum(_f32(1.0), (_f32(step) + _f32(1.0)) / _f32(schedule.warmup_steps))
        return float(_f32(schedule.learning_rate) * fraction)
    if type(schedule) is keras.optimizers.schedules.CosineDecay:
        return float(_cosine_decay(schedule, step))
    with keras.device("cpu"):
        return float(keras.ops.convert_to_numpy(schedule(step)))


def _cosine_decay(schedule, step):
    initial = _f32(schedule.initial_learning_rate)
    decay_steps, step = _f32(schedule.decay_steps), _f32(step)

    def decayed(step, decay_from):
        cosine = _f32(0.5) * (_f32(1.0) + np.cos(_f32(math.pi) * (step / decay_steps)))
        return decay_from * (_f32(1.0 - schedule.alpha) * cosine + _f32(schedule.alpha))

    if schedule.warmup_target is None:
        return decayed(np.minimum(step, decay_steps), initial)
    target, warmup = _f32(schedule.warmup_target), _f32(schedule.warmup_steps)
    step = np.minimum(step, decay_steps + warmup)
    if step < warmup:
        return (target - initial) * (step / warmup) + initial
    return decayed(step - warmup, target)


def ema_decay_on_host(train_config, iterations):
    """`DiffusionModel.ema_decay_at(iterations)` as a Python float, by the same float32
    arithmetic in NumPy: min(ema_decay, 1 - (1 + n)^-p), n = max(iterations - 1, 0)."""
    if not train_config.ema_warmup_power:
        return train_config.ema_decay
    n = np.maximum(_f32(iterations) - _f32(1.0), _f32(0.0))
    warmed = _f32(1.0) - np.power(_f32(1.0) + n, _f32(-train_config.ema_warmup_power))
    return float(np.minimum(_f32(train_config.ema_decay), warmed))


# The step as one CUDA graph.

_said = set()


def _say_once(message):
    """Prints `message` (to stderr) the first time this process meets it."""
    if message not in _said:
        _said.add(message)
        print(message, file=sys.stderr, flush=True)


def cuda_graph_option(model):
    """The run's CUDA-graph option (`TrainConfig.cuda_graph`): "auto" (capture on CUDA), "on"
    (also say why not on another device) or "off"."""
    return getattr(model.config.train, "cuda_graph", "auto")


class _GraphedStep:
    """The fused step (`_step_body`) captured once as a CUDA graph and replayed at every later
    step (torch.cuda.graph; the recipe of torch's "CUDA Graphs" notes, whole-network capture):
    `WARMUP` eager steps on a side stream first, then one capture with static input buffers
    into which each step's inputs (the images, and the draws `DiffusionModel.step_inputs` made
    eagerly) and `_StepScalars` are copied before a replay.

    A step whose inputs have another shape than the captured one runs eagerly; a capture that
    fails leaves the eager step for the rest of the run. Each says so once.
    """

    WARMUP = 3

    def __init__(self, model, plan):
        self.model, self.plan = model, plan
        self.steps = 0
        self.graph = self.replay = self.signature = None
        self.static_inputs = self.static_loss = None
        device = plan.adam.weights[0].device
        self.scalars = _StepScalars(torch.zeros((), device=device), torch.zeros((), device=device))

    @classmethod
    def for_model(cls, model, plan):
        """A `_GraphedStep` where the option asks for one and the step can be captured; else
        None, having said why where capture was asked for (nothing on a CPU with "auto")."""
        option = cuda_graph_option(model)
        if option == "off" or not plan.adam.fused:
            return None
        device = plan.adam.weights[0].device
        if device.type != "cuda":
            if option == "on":
                _say_once(f"CUDA graphs: the model is on {device.type}, not CUDA; eager steps.")
            return None
        reason = _uncapturable(model, plan)
        if reason:
            _say_once(f"CUDA graphs: not captured ({reason}); eager steps.")
            return None
        return cls(model, plan)

    def run(self, plan, inputs, scalars):
        """This step's loss (a device tensor), warmed up, captured or replayed; None where it
        must run eagerly."""
        if self.plan is not plan:
            return None
        signature = [None if x is None else (tuple(x.shape), x.dtype, x.device) for x in inputs]
        if self.signature is None:
            self.signature = signature
        if signature != self.signature:
            _say_once(
                "CUDA graphs: a batch of another shape than the captured step's runs eagerly "
                f"({signature} vs {self.signature})."
            )
            return None
        if self.steps < self.WARMUP:
            self.steps += 1
            return self._warm_up(inputs, scalars)
        if self.replay is None and not self._capture(inputs):
            return None
        for static, value in zip(self.static_inputs, inputs):
            if static is not None:
                static.copy_(value)
        for static, value in zip(self.scalars, scalars):
            static.fill_(value)
        self.replay()
        return self.static_loss

    def _warm_up(self, inputs, scalars):
        """An eager step on a side stream (lazy initialisation, cuBLAS workspaces and autograd's
        streams happen here rather than inside the capture)."""
        side, current = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            loss = _step_body(self.model, self.plan, inputs, scalars)
        current.wait_stream(side)
        return loss

    def body(self):
        """The step the graph holds: `_step_body` on the static buffers (`static_inputs`, and
        `scalars` as 0-dim tensors); also run uncaptured, on a CPU, by the tests."""
        return _step_body(self.model, self.plan, self.static_inputs, self.scalars)

    def _capture(self, inputs):
        """Captures `body`, then `replay` runs it; False (having said why) where the capture
        fails: the model is unchanged (a capture records kernels and runs none) and
        `iterations`' version moved, so its host counter is read again."""
        self.static_inputs = [None if x is None else x.clone() for x in inputs]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.static_loss = self.body()
        except Exception as error:  # any operation that cannot be captured
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            _say_once(f"CUDA graphs: the capture failed ({reason}); eager steps.")
            self.plan.graph = None
            self.model.zero_grad()
            return False
        self.graph, self.replay = graph, graph.replay  # the graph kept alive with its memory
        return True


def _uncapturable(model, plan):
    """Why this model's step cannot be captured as one CUDA graph; None where it can."""
    if worker().count > 1:
        return "a multi-worker step all-reduces its gradients between processes"
    if model.config.train.grad_accum > 1:
        return "--grad-accum slices micro-batches by host-made indices"
    if getattr(model.optimizer, "weight_decay", None):
        return "AdamW's decay (Keras' _apply_weight_decay) makes its scalars on the host"
    dropped = [
        layer.name
        for layer in internals.flatten_layers(model.network)
        if isinstance(layer, keras.layers.Dropout) and layer.rate
    ]
    if dropped:  # keras/src/backend/torch/random.py: int(seed) per draw
        return "dropout seeds its generator from a device value at every call (Keras' torch random)"
    return None


def _moment_views(moments, weights):
    """Flat views of Adam's `moments` (Keras variables), each first re-stored (same values) in the
    memory layout of its weight where they differ; None where Keras' storage cannot be replaced.

    Keras makes optimizer slots contiguous and has no option for another layout.
    """
    views = []
    for moment, weight in zip(moments, weights):
        value = moment.value
        if value.stride() != weight.stride():
            relaid = torch.empty_like(weight, dtype=value.dtype).copy_(value)  # `weight`'s strides
            if not internals.set_torch_value(moment, relaid):
                return None
        views.append(_flat(moment.value))
    return views


def _flat(tensor, like=None):
    """A dense tensor's memory as a 1-D view (the tensor itself when contiguous); with `like`,
    of a copy in `like`'s layout if the strides differ.

    `torch._fused_adam_` copies a non-contiguous gradient into Keras' contiguous order (it did
    for each convolution kernel, a large part of a ddpm_cifar10 step); a weight, its gradient
    and its moments kept in one memory order have flat views that pair the same elements.
    """
    if like is not None and tensor.stride() != like.stride():
        tensor = torch.empty_like(like, dtype=tensor.dtype).copy_(tensor)
    if tensor.is_contiguous():
        return tensor
    if not _dense(tensor):
        shape, strides = tuple(tensor.shape), tensor.stride()
        raise ValueError(f"Expected a dense tensor; got shape {shape}, strides {strides}.")
    return tensor.as_strided((tensor.numel(),), (1,), tensor.storage_offset())


def _dense(tensor):
    """Whether `tensor`'s elements fill a block of memory with no gaps or overlaps (any order)."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda pair: pair[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _apply_gradients(optimizer, gradients, variables, plan=None):
    """`optimizer.apply(gradients, variables)` with torch's multi-tensor and fused kernels.

    Keras clips tensor by tensor (a dozen small ops per weight, 2,000+ for ddpm_cifar10); torch's
    multi-tensor norm and multiply do the same scaling, clip / max(norm, clip), in two calls
    (`_clip`). On a CPU, torch runs Keras' multi-tensor Adam as about ten passes over every
    weight; `torch._fused_adam_` makes one (`_fused_update`). Other optimizers take Keras' update
    after the clipping, and loss-scaled (fp16) ones Keras' path throughout. `plan`: an
    `_AdamPlan` of these variables, kept by the caller across steps.
    """
    if hasattr(optimizer, "inner_optimizer"):
        optimizer.apply(gradients, variables)
        return
    _clip(optimizer, gradients)
    plan = plan or _AdamPlan(optimizer, variables)
    if not plan.fused:
        with clipping_switched_off(optimizer):
            optimizer.apply(gradients, variables)
        return
    step = plan.iterations()
    plan.apply_weight_decay(variables)  # AdamW's decoupled decay, as Keras applies it
    _fused_update(optimizer, gradients, plan, _adam_step_size(optimizer, plan, step))
    _increment(optimizer.iterations)
    plan.counted()


def _increment(iterations):
    """`iterations.assign_add(1)` as one in-place add on the device. Keras' `assign_add` adds a
    tensor it makes from the Python 1 (`convert_to_tensor`: on CUDA a copy from host memory,
    which waits for the device and cannot be captured), then copies the sum back."""
    iterations.value.add_(1)


def _clip(optimizer, gradients):
    """Scales `gradients` in place by clip / max(global norm, clip) (Keras' `global_clipnorm`),
    on the device: the clip is a constant of the kernel, not a tensor made from the host."""
    clip = optimizer.global_clipnorm
    if clip:
        norm = torch.linalg.vector_norm(torch.stack(internals.foreach_norm(gradients)))
        internals.foreach_mul_(gradients, clip / torch.clamp(norm, min=clip))


def _fusable_adam(optimizer, variables):
    """Keras' Adam or AdamW with none of the options `_fused_update` leaves out."""
    if not isinstance(optimizer, keras.optimizers.Adam) or not variables:
        return False
    plain = not (optimizer.amsgrad or optimizer.use_ema or optimizer.gradient_accumulation_steps)
    betas = all(
        isinstance(beta, (int, float)) and 0.0 <= beta < 1.0
        for beta in (optimizer.beta_1, optimizer.beta_2)
    )
    placements = {(v.dtype, str(v.value.device)) for v in variables}
    uniform = len(placements) == 1 and variables[0].dtype == "float32"
    no_constraints = all(v.constraint is None and not v.overwrite_with_gradient for v in variables)
    return plain and betas and uniform and no_constraints


def _fused_update(optimizer, gradients, plan, step_size):
    """Keras' Adam step by `torch._fused_adam_`: m and v as both define them, and
    w -= alpha m / (sqrt(v) + eps) with Keras' alpha = lr sqrt(1 - b2^t) / (1 - b1^t)
    (`step_size`: a float, or a 0-dim tensor under graph capture) and Keras' epsilon.

    Torch's kernel computes w -= lr / (1 - b1^s) m / (sqrt(v) / sqrt(1 - b2^s) + eps) from its
    step count s; at `_SATURATED_STEP` both corrections are 1, so it computes Keras' update from
    our alpha and epsilon, with no scalar that a captured graph would have to change.
    """
    plan.kernel(
        plan.flat_weights,
        [_flat(gradient, weight) for gradient, weight in zip(gradients, plan.weights)],
        plan.momentums,
        plan.velocities,
        [],
        plan.state_steps,
        lr=step_size,
        beta1=float(optimizer.beta_1),
        beta2=float(optimizer.beta_2),
        weight_decay=0.0,
        eps=float(optimizer.epsilon),
        amsgrad=False,
        maximize=False,
    )


# Layer kernels on NHWC tensors. Keras' torch backend makes an NCHW copy of every convolution's
# input and hands back a permuted view, and composes GroupNorm from reductions: together a large
# part of the kernel time in torch.profiler's table of a CPU forward pass of ddpm_cifar10
# (docs/performance.md). A contiguous NHWC tensor permuted to NCHW *is* a channels_last tensor,
# which oneDNN and cuDNN convolve and normalise in place, and whose result permuted back is a
# contiguous NHWC tensor again: no copies.


def call_network(network, inputs, training):
    """`network(inputs, training=training)` for a functional `network` in float32 on torch
    tensors, with each layer's `call` run directly: the graph's nodes skip `Layer.__call__`
    (input conversion, masks, autocast scopes, the torch module hooks), which took about a
    quarter of the tiny preset's eager step. Those steps change nothing here: every layer
    computes in float32 (no autocast) and the inputs are already tensors of the network's input
    dtypes. None (the caller calls `network`) where that does not hold."""
    if not (_float32_layers(network) and _plain_inputs(network, inputs)):
        return None
    return internals.run_functional(
        network, list(inputs), functools.partial(_call_directly, training=training)
    )


def _float32_layers(network):
    """Whether every layer of `network` computes and stores in float32 (kept on the network
    for its dtype policy)."""
    key = network.dtype_policy.name
    kept = getattr(network, "_keras_ddpm_float32_layers", None)
    if kept is None or kept[0] != key:
        layers = [network, *internals.flatten_layers(network)]
        dtypes = {(layer.compute_dtype, layer.variable_dtype) for layer in layers}
        kept = (key, dtypes == {("float32", "float32")})
        object.__setattr__(network, "_keras_ddpm_float32_layers", kept)
    return kept[1] and not internals.autocast_scope_open()


def _plain_inputs(network, inputs):
    return len(inputs) == len(network.inputs) and all(
        torch.is_tensor(x) and keras.backend.standardize_dtype(x.dtype) == spec.dtype
        for x, spec in zip(inputs, network.inputs)
    )


def _call_directly(operation, *args, training=None, **kwargs):
    if not isinstance(operation, keras.layers.Layer):
        return operation(*args, **kwargs)  # a Keras op in the graph (`ops.silu`, `+`)
    if training is not None and internals.call_accepts_training(operation):
        kwargs["training"] = training
    return operation.call(*args, **kwargs)


class ConvKernelLayout:
    """Wraps a Keras initializer: the (kh, kw, in, out) kernel it makes, with the same shape and
    values, stored in the memory order (out, kh, kw, in) of torch's channels_last kernel.

    `conv2d_nhwc` then views it as torch's (out, in, kh, kw) without a copy, and autograd gives
    its gradient the same layout, where a contiguous Keras kernel took a transposing copy in the
    forward and another in the backward pass. Elementwise updates (Adam, EMA) and saving see only
    shapes and values.
    """

    def __init__(self, initializer):
        self.initializer = initializer

    def __call__(self, shape, dtype=None):
        kernel = keras.ops.convert_to_tensor(self.initializer(shape, dtype=dtype))
        # A copy with exactly torch's strides, even along an axis of size 1 (`_kernel`), where
        # `.contiguous()` would keep Keras' strides.
        permuted = torch.permute(kernel, (3, 0, 1, 2))
        return permuted.clone(memory_format=torch.contiguous_format).permute(1, 2, 3, 0)


def conv_kernel_initializer(initializer):
    """`ConvKernelLayout` of Keras' `initializer` (an initializer or its name)."""
    return ConvKernelLayout(keras.initializers.get(initializer))


def _kernel(kernel, dtype):
    """Keras' (kh, kw, in, out) `kernel` as torch's (out, in, kh, kw) kernel in `dtype`, with the
    strides of a channels_last tensor: a view of a kernel stored by `ConvKernelLayout`, a copy of
    any other (autograd takes its gradient back to `kernel`).

    oneDNN and cuDNN convolve channels_last data with a channels_last kernel and would otherwise
    copy it in the forward and the backward pass. Torch's fallback (`slow_conv2d`, which a CPU
    takes for a batch of 1 and for float16) needs those exact strides: along an axis of size 1
    (one output channel, `conv_out` of a grayscale model) other strides leave a tensor both
    channels_last and contiguous, the fallback makes the kernel's gradient in one layout and
    checks it against the other ("slow_conv2d: grad_weight must be contiguous").
    """
    kernel = torch.permute(kernel, (3, 2, 0, 1))
    _, in_channels, _, width = kernel.shape
    strides = (kernel.shape[2] * width * in_channels, 1, width * in_channels, in_channels)
    if kernel.dtype == dtype and kernel.stride() == strides:
        return kernel
    channels_last = torch.empty(
        kernel.shape, dtype=dtype, device=kernel.device, memory_format=torch.channels_last
    )
    return channels_last.copy_(kernel)


def conv2d_nhwc(x, kernel, strides, padding, bias=None, cache=None):
    """2D convolution of NHWC `x` with a Keras (kh, kw, in, out) kernel (and `bias`), as (y, cache).

    `padding` is (top, bottom, left, right) zeros. Outside autograd (sampling) the kernel in
    torch's (out, in, kh, kw) layout (`_kernel`: a copy in another dtype) is kept in `cache` (the
    caller holds it) until the variable changes (its tensor, that tensor's in-place version, or
    the dtype asked for), so a sampling chain makes it once instead of at every step.
    """
    value = getattr(kernel, "value", kernel)
    if torch.is_grad_enabled() and value.requires_grad:
        kernel = _kernel(value, x.dtype)
    else:
        version = internals.tensor_version(value)  # None: made again at every call
        kept = cache is not None and cache[0] is value and cache[1:3] == (version, x.dtype)
        if version is None or not kept:
            cache = (value, version, x.dtype, _kernel(value.detach(), x.dtype))
        kernel = cache[3]
    x = torch.permute(x, (0, 3, 1, 2))
    top, bottom, left, right = padding
    # TensorFlow's "same" with a stride pads one side more: pad first (channels_last kept).
    if (top, left) != (bottom, right):
        x, top, left = torch.nn.functional.pad(x, (left, right, top, bottom)), 0, 0
    if bias is not None:
        bias = getattr(bias, "value", bias).to(x.dtype)
    y = torch.nn.functional.conv2d(x, kernel, bias, stride=tuple(strides), padding=(top, left))
    return torch.permute(y, (0, 2, 3, 1)), cache


def dense(x, kernel, bias):
    """x @ kernel + bias over the last axis of `x` (Keras variables), as one `torch.addmm`."""
    return _dense_product(x, kernel.value, bias.value)


def _dense_product(x, kernel, bias):
    y = torch.addmm(bias, x.reshape(-1, x.shape[-1]), kernel)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def attention_nhwc(q, k, v):
    """Single-head softmax(q k^T / sqrt(C)) v over all positions of NHWC `q`, `k`, `v`: torch's
    `scaled_dot_product_attention` on views, as Keras' `dot_product_attention` computes it
    after its reshapes and transposes."""
    n, height, width, channels = q.shape
    q, k, v = (t.reshape(n, 1, height * width, channels) for t in (q, k, v))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    return y.reshape(n, height, width, channels)


def upsample_nearest_nhwc(x, factor):
    """Nearest-neighbour upsampling of NHWC `x` by an integer `factor` (torch's channels_last
    kernel; Keras' layer makes two copies)."""
    nchw = torch.permute(x, (0, 3, 1, 2))
    y = torch.nn.functional.interpolate(nchw, scale_factor=factor, mode="nearest")
    return torch.permute(y, (0, 2, 3, 1))


def group_norm_nhwc(x, groups, gamma, beta, epsilon):
    """GroupNorm over the last axis of NHWC `x` with Keras variables `gamma` and `beta`, in
    float32 (as Keras' own layer computes it): one fused kernel instead of Keras' reductions."""
    gamma, beta = (getattr(w, "value", w).to(torch.float32) for w in (gamma, beta))
    return _group_norm(x, groups, gamma, beta, epsilon)


def _group_norm(x, groups, gamma, beta, epsilon):
    nchw = torch.permute(x, (0, 3, 1, 2)).float()
    y = torch.nn.functional.group_norm(nchw, groups, gamma, beta, epsilon)
    return torch.permute(y, (0, 2, 3, 1))


# Mixed precision.


@functools.cache
def compute_dtype_problem(dtype):
    """Why torch cannot train the network in `dtype` on its default device, as one sentence; None
    where it can. Its CPU kernels for bfloat16 and float16 came one by one over its releases
    (2.13 has all the network uses; float16 convolutions go through its unvectorised fallback,
    many times slower than float32). The probe: a batch of one through those operations, forward
    and backward, in `dtype`."""
    if dtype == "float32":
        return None
    device = keras.ops.zeros(()).device
    try:
        _network_probe(getattr(torch, dtype), device)
    except (RuntimeError, NotImplementedError) as error:
        reason = str(error).strip().splitlines()[0]
        where = f"on this {device.type} ({reason})"
        return f"PyTorch {torch.__version__} cannot train in {dtype} {where}."
    return None


def _network_probe(dtype, device):
    """The network's operations in `dtype`, on NHWC data as the layers run them, then backward."""

    def random(*shape):
        return torch.randn(*shape, device=device).to(dtype).requires_grad_()

    x = random(1, 4, 4, 8)
    h, _ = conv2d_nhwc(x, random(3, 3, 8, 8), (1, 1), (1, 1, 1, 1), bias=random(8))
    h = keras.ops.silu(_group_norm(h, 2, None, None, 1e-6).to(dtype))
    h = upsample_nearest_nhwc(h, 2)
    h, _ = conv2d_nhwc(h, random(3, 3, 8, 8), (2, 2), (0, 1, 0, 1))
    q, k, v = (_dense_product(h, random(8, 8), random(8)).reshape(1, 16, 1, 8) for _ in range(3))
    keras.ops.dot_product_attention(q, k, v).float().sum().backward()
