"""The one place where the Keras backend matters.

Everything else is `keras.ops`. Here: the training step (gradients are taken
differently by each framework; the loss itself is `DiffusionModel.compute_diffusion_loss`,
shared by all three) and compilation of inference functions.
"""

import contextlib
import functools
import math
import operator
import os

import keras

# XLA's CPU compiler (jax 0.10) hands convolutions, matrix products and element-wise ops to the
# YNNPACK library by default, which made this project's CPU forward passes slower (see
# docs/performance.md).
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def configure_xla_cpu():
    """Switches XLA's CPU YNNPACK fusions off for JAX, unless XLA_FLAGS already names them.

    XLA reads its flags when JAX first computes, so call this before any JAX computation (the CLI
    and the app do, first thing). Changes `os.environ["XLA_FLAGS"]`; nothing on other backends.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if backend_name() == "jax" and YNN_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()


def backend_name():
    return keras.backend.backend()


def default_jit_compile():
    """`jit_compile` for `fit`: XLA on TensorFlow only with a GPU.

    On a CPU, XLA made the tiny preset's first `fit` slower to compile (36 s vs 17 s) and its
    steps slower (0.10 s vs 0.06 s a step), measured on this project's 2-core machines; JAX
    always compiles and PyTorch runs eagerly (Keras' "auto").
    """
    if backend_name() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return "auto"


def tensorflow_for_data():
    """TensorFlow for tf.data pipelines: under JAX or PyTorch it must not take the GPU's memory."""
    import tensorflow as tf

    if backend_name() != "tensorflow":
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # TensorFlow's devices were already initialised
            pass
    return tf


def prefetch_device():
    """The device tf.data should prefetch batches to ("/GPU:0"), or None: JAX and PyTorch move
    batches to their devices themselves, and a tf.distribute strategy places them itself."""
    if backend_name() != "tensorflow":
        return None
    tf = tensorflow_for_data()
    if not tf.config.list_logical_devices("GPU") or tf.distribute.has_strategy():
        return None
    return "/GPU:0"


def child_environment(backend, **extra):
    """`os.environ` for a child Python process on Keras backend `backend` (TensorFlow's C++ logs
    quiet), with `extra` variables added."""
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def supports_steps_per_execution():
    """Whether `fit` can run several steps per call (`steps_per_execution` > 1): TensorFlow and
    JAX; PyTorch runs one step per call."""
    return backend_name() != "torch"


def seed_generator(seed=None):
    """`keras.random.SeedGenerator(seed)` whose draws for neighbouring seeds are independent.

    Keras' PyTorch backend seeds draw k of `SeedGenerator(s)` with the integer s + k, so seed
    s + 1 replays seed s's stream shifted by one draw (batch i of `eval` sampled with seed + i
    would repeat batch 0's noise). There the seed is first spread over 31 bits by NumPy's
    `SeedSequence` hash; TensorFlow and JAX draw from the pair (s, k) and keep `seed` as is.
    """
    if seed is not None and backend_name() == "torch":
        import numpy as np

        seed = int(np.random.SeedSequence(seed).generate_state(1)[0] >> 1)
    return keras.random.SeedGenerator(seed)


def replica_context():
    """(replica id, number of replicas) inside a `tf.distribute` step; (0, 1) everywhere else.

    JAX's `keras.distribution.DataParallel` needs nothing here: it compiles one program for
    the global batch and XLA splits it across devices.
    """
    if backend_name() == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            return context.replica_id_in_sync_group, context.num_replicas_in_sync
    return 0, 1


def _unpack(data):
    images, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    return images, labels


def train_step(model, *args):
    """Dispatches to the training step of the active backend."""
    name = backend_name()
    if name == "jax":
        return _jax_train_step(model, *args)
    if name == "tensorflow":
        return _tensorflow_train_step(model, *args)
    if name == "torch":
        return _torch_train_step(model, *args)
    raise NotImplementedError(f"keras_ddpm supports the tensorflow, torch and jax backends, not {name!r}.")


def _tensorflow_train_step(model, data):
    import tensorflow as tf

    images, labels = _unpack(data)
    _, replicas = replica_context()
    with tf.GradientTape() as tape:
        loss = model.compute_diffusion_loss(images, labels, training=True)
        # tf.distribute sums the replicas' gradients: divide so they average (Keras' own convention).
        scaled_loss = model.optimizer.scale_loss(loss / replicas if replicas > 1 else loss)
    gradients = tape.gradient(scaled_loss, model.trainable_variables)
    if replicas > 1:
        _tensorflow_apply_clipped_across_replicas(model.optimizer, gradients, model.trainable_variables, replicas)
    else:
        model.optimizer.apply(gradients, model.trainable_variables)
    model.update_ema()
    model.loss_tracker.update_state(loss)
    return {"loss": model.loss_tracker.result()}


def _tensorflow_apply_clipped_across_replicas(optimizer, gradients, variables, replicas):
    """Global-norm clipping of the replicas' summed gradient, then `optimizer.apply`.

    Keras' optimizer clips each replica's gradient before tf.distribute sums them, so
    `global_clipnorm` would bound the wrong norm (and a step on N devices would differ
    from one on 1 device). Here the sum is clipped, and the optimizer (its clipping
    switched off while the step is traced) sums the replicas' now equal gradients / N.
    """
    import tensorflow as tf

    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer: clipping is the inner one's
    clip = inner.global_clipnorm
    if not clip:
        optimizer.apply(gradients, variables)
        return
    gradients = [tf.convert_to_tensor(g) for g in gradients]  # IndexedSlices (embeddings) -> dense
    summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)
    scale = optimizer.dynamic_scale if inner is not optimizer else 1.0  # gradients are loss-scaled
    summed, _ = tf.clip_by_global_norm(summed, clip * scale)
    with _clipping_switched_off(inner):
        optimizer.apply([g / replicas for g in summed], variables)


@contextlib.contextmanager
def _clipping_switched_off(optimizer):
    """The optimizer's own `global_clipnorm` off for one `apply`: the caller clipped already."""
    clip = optimizer.global_clipnorm
    optimizer.global_clipnorm = None
    try:
        yield
    finally:
        optimizer.global_clipnorm = clip


def _torch_train_step(model, data):
    import torch

    images, labels = _unpack(data)
    model.zero_grad()
    loss = model.compute_diffusion_loss(images, labels, training=True)
    model.optimizer.scale_loss(loss).backward()
    variables = model.trainable_variables
    plan = _torch_step_plan(model, variables)
    gradients = [weight.grad for weight in plan.adam.weights]
    with torch.no_grad():
        _torch_apply(model.optimizer, gradients, variables, plan.adam)
        decay = float(model.ema_decay_at(model.optimizer.iterations))
        torch._foreach_lerp_(plan.ema_weights, plan.network_weights, 1.0 - decay)  # `DiffusionModel.update_ema`
    model.loss_tracker.update_state(loss.detach())
    return {"loss": model.loss_tracker.result()}


def _torch_step_plan(model, variables):
    """The tensors a PyTorch training step reads and updates, gathered once and kept on the model
    (walking Keras' layers and variable properties for them took about 8 ms a ddpm_cifar10 step);
    gathered again when the optimizer, its state or the trainable variables change."""
    plan = getattr(model, "_torch_plan", None)
    if plan is None or not plan.adam.matches(model.optimizer, variables):
        plan = model._torch_plan = _TorchStepPlan(model, variables)
    return plan


class _TorchStepPlan:
    def __init__(self, model, variables):
        self.adam = _TorchAdamPlan(model.optimizer, variables)
        self.ema_weights = [weight.value for weight in model.ema_network.weights]
        self.network_weights = [weight.value for weight in model.network.weights]


class _TorchAdamPlan:
    """The weights and, where `_torch_fused_adam` applies, Adam's moments, as torch tensors.

    Builds the optimizer if needed, and gives each moment its weight's memory layout:
    `torch._fused_adam_` walks a weight and its moments as flat memory, and a convolution kernel
    is kept in torch's layout (`TorchConvKernelLayout`).
    """

    def __init__(self, optimizer, variables):
        if not optimizer.built:
            optimizer.build(variables)
        # The objects themselves, not their ids: a new optimizer may reuse a freed one's id.
        self.optimizer, self.variables = optimizer, list(variables)
        self.num_optimizer_variables = len(optimizer.variables)
        self.weights = [v.value for v in variables]
        self.fused = _fusable_adam(optimizer, variables)
        if self.fused:
            index = optimizer._get_variable_index
            slots = [optimizer._momentums, optimizer._velocities]
            self.momentums, self.velocities = (
                [_torch_flat(_torch_with_layout(slot[index(v)], weight)) for v, weight in zip(variables, self.weights)]
                for slot in slots
            )
            self.flat_weights = [_torch_flat(weight) for weight in self.weights]

    def matches(self, optimizer, variables):
        """Whether this plan still describes `optimizer` updating `variables`."""
        return (
            self.optimizer is optimizer
            and len(optimizer.variables) == self.num_optimizer_variables
            and len(variables) == len(self.variables)
            and all(map(operator.is_, variables, self.variables))
        )


def _torch_flat(tensor, like=None):
    """A dense tensor's memory as a 1-D view (the tensor itself when contiguous); with `like`,
    of a copy in `like`'s layout if the strides differ.

    `torch._fused_adam_` copies a non-contiguous gradient into Keras' contiguous order (it did
    for each convolution kernel, about 25 ms of a ddpm_cifar10 step); a weight, its gradient and its
    moments kept in one memory order have flat views that pair the same elements.
    """
    import torch

    if like is not None and tensor.stride() != like.stride():
        tensor = torch.empty_like(like, dtype=tensor.dtype).copy_(tensor)
    if tensor.is_contiguous():
        return tensor
    if not _torch_dense(tensor):
        raise ValueError(f"Expected a dense tensor; got shape {tuple(tensor.shape)}, strides {tensor.stride()}.")
    return tensor.as_strided((tensor.numel(),), (1,), tensor.storage_offset())


def _torch_dense(tensor):
    """Whether `tensor`'s elements fill a block of memory with no gaps or overlaps (any order)."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda pair: pair[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _torch_with_layout(variable, like):
    """`variable`'s tensor, first re-stored (same values) in the memory layout of tensor `like`
    if it differs. Keras makes optimizer slots contiguous and has no option for another layout,
    hence its private `_value`."""
    import torch

    value = variable.value
    if value.stride() != like.stride():
        relaid = torch.empty_like(like, dtype=value.dtype).copy_(value)  # `like`'s strides
        variable._value = torch.nn.Parameter(relaid, requires_grad=value.requires_grad)
    return variable.value


def _torch_apply(optimizer, gradients, variables, plan=None):
    """`optimizer.apply(gradients, variables)` with torch's multi-tensor and fused kernels.

    Keras clips tensor by tensor (a dozen small ops per weight, 2,000+ for ddpm_cifar10);
    `torch._foreach_norm`/`_foreach_mul_` do the same scaling, clip / max(norm, clip), in two
    calls. On a CPU, torch runs Keras' multi-tensor Adam as about ten passes over every weight;
    `torch._fused_adam_` makes one (`_torch_fused_adam`). Other optimizers take Keras' update
    after the clipping, and loss-scaled (fp16) ones Keras' path throughout. `plan`: a
    `_TorchAdamPlan` of these variables, kept by the caller across steps.
    """
    import torch

    if hasattr(optimizer, "inner_optimizer"):
        optimizer.apply(gradients, variables)
        return
    clip = optimizer.global_clipnorm
    if clip:
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gradients)))
        torch._foreach_mul_(gradients, clip / torch.maximum(norm, torch.tensor(clip, device=norm.device)))
    plan = plan or _TorchAdamPlan(optimizer, variables)
    if not plan.fused:
        with _clipping_switched_off(optimizer):
            optimizer.apply(gradients, variables)
        return
    optimizer._apply_weight_decay(variables)  # AdamW's decoupled decay, as Keras applies it
    _torch_fused_adam(optimizer, gradients, plan)
    optimizer.iterations.assign_add(1)


def _fusable_adam(optimizer, variables):
    """Keras' Adam or AdamW with none of the options `_torch_fused_adam` leaves out."""
    if not isinstance(optimizer, keras.optimizers.Adam) or not variables:
        return False
    plain = not (optimizer.amsgrad or optimizer.use_ema or optimizer.gradient_accumulation_steps)
    uniform = len({(v.dtype, str(v.value.device)) for v in variables}) == 1 and variables[0].dtype == "float32"
    no_constraints = all(v.constraint is None and not v.overwrite_with_gradient for v in variables)
    return plain and uniform and no_constraints


def _torch_fused_adam(optimizer, gradients, plan):
    """Keras' Adam step by `torch._fused_adam_`: m and v as both define them, and
    w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps), Keras' epsilon (torch's kernel adds
    its eps to sqrt(v) / sqrt(1 - b2^t), so it gets eps / sqrt(1 - b2^t))."""
    import torch

    step = float(optimizer.iterations) + 1
    beta_1, beta_2 = float(optimizer.beta_1), float(optimizer.beta_2)
    device = gradients[0].device
    torch._fused_adam_(
        plan.flat_weights,
        [_torch_flat(gradient, weight) for gradient, weight in zip(gradients, plan.weights)],
        plan.momentums,
        plan.velocities,
        [],
        [torch.full((), step, device=device)] * len(gradients),
        lr=float(optimizer.learning_rate),
        beta1=beta_1,
        beta2=beta_2,
        weight_decay=0.0,
        eps=float(optimizer.epsilon) / math.sqrt(1.0 - beta_2**step),
        amsgrad=False,
        maximize=False,
    )


def _jax_train_step(model, state, data):
    import jax

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    images, labels = _unpack(data)

    def loss_fn(trainable, non_trainable):
        mapping = list(zip(model.trainable_variables, trainable))
        mapping += list(zip(model.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            loss = model.compute_diffusion_loss(images, labels, training=True)
        # LossScaleOptimizer reads its scale variable: map the optimizer's state too (as Keras' own step does).
        with keras.StatelessScope(state_mapping=list(zip(model.optimizer.variables, optimizer_variables))):
            scaled_loss = model.optimizer.scale_loss(loss)
        # Seed generators (ours and dropout's) advanced inside the scope.
        updated = [scope.get_current_value(v) for v in model.non_trainable_variables]
        return scaled_loss, (loss, updated)

    (_, (loss, non_trainable)), gradients = jax.value_and_grad(loss_fn, has_aux=True)(trainable, non_trainable)
    trainable, optimizer_variables = model.optimizer.stateless_apply(optimizer_variables, gradients, trainable)
    non_trainable = list(non_trainable)
    iterations = optimizer_variables[_index_of(model.optimizer.iterations, model.optimizer.variables)]
    decay = model.ema_decay_at(iterations)
    for ema_index, weight_index in model.ema_variable_pairs():
        non_trainable[ema_index] = model.ema_update_value(non_trainable[ema_index], trainable[weight_index], decay)
    metrics_variables = model.loss_tracker.stateless_update_state(metrics_variables, loss)
    logs = {"loss": model.loss_tracker.stateless_result(metrics_variables)}
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def _index_of(variable, variables):
    return next(i for i, v in enumerate(variables) if v is variable)


def compile_inference(fn, variables, jit_compile=False):
    """Compiles `fn(*tensors)`, which reads (never writes) `variables`, for repeated calls.

    JAX: `jax.jit` with the variables' values passed in as arguments (not baked in as
    constants, so new weights need no recompilation). TensorFlow: `tf.function`
    (XLA when `jit_compile`). PyTorch: eager under `torch.no_grad()`.
    """
    name = backend_name()
    if name == "jax":
        import jax

        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        compiled = jax.jit(pure)
        return lambda *args: compiled([v.value for v in variables], *args)
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)
    if name == "torch":
        import torch

        def no_grad(*args):
            with torch.no_grad():
                return fn(*args)

        return no_grad
    raise NotImplementedError(f"keras_ddpm supports the tensorflow, torch and jax backends, not {name!r}.")


def compile_loop(fn, variables, jit_compile=None):
    """Compiles a whole sampling loop `fn(x, x0, start, stop, *tensors)` (a `keras.ops.fori_loop`
    over the network, `samplers.reverse_steps`) so that a chain costs one call.

    JAX: `jax.jit` (the loop becomes one `lax.while_loop`; `start`/`stop` are traced, so any
    range of steps reuses the compilation). TensorFlow: `tf.function` with XLA by default
    (`jit_compile`), the Python ints `start`/`stop` passed as tensors so they never retrace.
    PyTorch: eager under `torch.no_grad()` (the loop is a Python loop).
    """
    name = backend_name()
    if name == "tensorflow":
        import tensorflow as tf

        compiled = compile_inference(fn, variables, jit_compile=True if jit_compile is None else jit_compile)

        def with_tensor_bounds(x, x0, start, stop, *args):
            return compiled(x, x0, tf.constant(start, tf.int32), tf.constant(stop, tf.int32), *args)

        return with_tensor_bounds
    return compile_inference(fn, variables)


# PyTorch kernels on NHWC tensors. Keras' torch backend makes an NCHW copy of every convolution's
# input and hands back a permuted view, and composes GroupNorm from reductions: together about 230
# of 824 ms of kernel time in torch.profiler's table of a CPU forward pass of ddpm_cifar10. A
# contiguous NHWC tensor permuted to NCHW *is* a channels_last tensor, which oneDNN and cuDNN
# convolve and normalise in place, and whose result permuted back is a contiguous NHWC tensor
# again: no copies.


class TorchConvKernelLayout:
    """Wraps a Keras initializer: the (kh, kw, in, out) kernel it makes, with the same shape and
    values, stored in the memory order (out, kh, kw, in) of torch's channels_last kernel.

    `torch_conv2d_nhwc` then views it as torch's (out, in, kh, kw) without a copy, and autograd
    gives its gradient the same layout, where a contiguous Keras kernel took a transposing copy
    in the forward and another in the backward pass: about 90 ms of a 2.3 s ddpm_cifar10
    training step on this project's CPU (torch.profiler). Elementwise updates (Adam, EMA) and
    saving see only shapes and values.
    """

    def __init__(self, initializer):
        self.initializer = initializer

    def __call__(self, shape, dtype=None):
        import torch

        kernel = keras.ops.convert_to_tensor(self.initializer(shape, dtype=dtype))
        # A copy with exactly torch's strides, even along an axis of size 1 (`_torch_kernel`),
        # where `.contiguous()` would keep Keras' strides.
        return torch.permute(kernel, (3, 0, 1, 2)).clone(memory_format=torch.contiguous_format).permute(1, 2, 3, 0)


def _torch_kernel(kernel, dtype):
    """Keras' (kh, kw, in, out) `kernel` as torch's (out, in, kh, kw) kernel in `dtype`, with the
    strides of a channels_last tensor: a view of a kernel stored by `TorchConvKernelLayout`, a
    copy of any other (autograd takes its gradient back to `kernel`).

    oneDNN and cuDNN convolve channels_last data with a channels_last kernel and would otherwise
    copy it in the forward and the backward pass. Torch's fallback (`slow_conv2d`, which a CPU
    takes for a batch of 1 and for float16) needs those exact strides: along an axis of size 1
    (one output channel, `conv_out` of a grayscale model) other strides leave a tensor both
    channels_last and contiguous, the fallback makes the kernel's gradient in one layout and
    checks it against the other ("slow_conv2d: grad_weight must be contiguous").
    """
    import torch

    kernel = torch.permute(kernel, (3, 2, 0, 1))
    _, in_channels, _, width = kernel.shape
    strides = (kernel.shape[2] * width * in_channels, 1, width * in_channels, in_channels)
    if kernel.dtype == dtype and kernel.stride() == strides:
        return kernel
    channels_last = torch.empty(kernel.shape, dtype=dtype, device=kernel.device, memory_format=torch.channels_last)
    return channels_last.copy_(kernel)


def torch_conv2d_nhwc(x, kernel, strides, padding, cache=None, bias=None):
    """2D convolution of NHWC `x` with a Keras (kh, kw, in, out) kernel (and `bias`); returns (y, cache).

    `padding` is (top, bottom, left, right) zeros. Outside autograd (sampling) the kernel in torch's
    (out, in, kh, kw) layout (`_torch_kernel`: a copy in another dtype) is kept in `cache` (the
    caller holds it) until the variable changes (its tensor, that tensor's in-place version, or
    the dtype asked for), so a sampling chain makes it once instead of at every step.
    """
    import torch

    value = getattr(kernel, "value", kernel)
    if torch.is_grad_enabled() and value.requires_grad:
        kernel = _torch_kernel(value, x.dtype)
    else:
        if cache is None or cache[0] is not value or cache[1] != value._version or cache[2] != x.dtype:
            cache = (value, value._version, x.dtype, _torch_kernel(value.detach(), x.dtype))
        kernel = cache[3]
    x = torch.permute(x, (0, 3, 1, 2))
    top, bottom, left, right = padding
    if (top, left) != (bottom, right):  # TensorFlow's "same" with a stride: pad (channels_last kept)
        x, top, left = torch.nn.functional.pad(x, (left, right, top, bottom)), 0, 0
    if bias is not None:
        bias = getattr(bias, "value", bias).to(x.dtype)
    y = torch.nn.functional.conv2d(x, kernel, bias, stride=tuple(strides), padding=(top, left))
    return torch.permute(y, (0, 2, 3, 1)), cache


def torch_dense(x, kernel, bias):
    """x @ kernel + bias over the last axis of `x`, as one `torch.addmm` over the other axes flattened."""
    import torch

    y = torch.addmm(bias, x.reshape(-1, x.shape[-1]), kernel)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])


def torch_upsample_nearest_nhwc(x, factor):
    """Nearest-neighbour upsampling of NHWC `x` by an integer `factor` (torch's channels_last kernel)."""
    import torch

    y = torch.nn.functional.interpolate(torch.permute(x, (0, 3, 1, 2)), scale_factor=factor, mode="nearest")
    return torch.permute(y, (0, 2, 3, 1))


def torch_group_norm_nhwc(x, groups, gamma, beta, epsilon):
    """GroupNorm over the last axis of NHWC `x` (computed in float32, as Keras' own layer does)."""
    import torch

    y = torch.nn.functional.group_norm(torch.permute(x, (0, 3, 1, 2)).float(), groups, gamma, beta, epsilon)
    return torch.permute(y, (0, 2, 3, 1))


@functools.cache
def compute_dtype_problem(dtype):
    """Why this backend cannot train the network in `dtype` on its default device, as one
    sentence; None where it can.

    Asked when a mixed precision policy is set, so that a missing kernel stops a run before it
    trains rather than in its first backward pass. Only PyTorch is asked, whose CPU kernels for
    bfloat16 and float16 came one by one over its releases (2.13 has all the network uses;
    float16 convolutions go through its unvectorised fallback, many times slower than float32).
    The probe: a batch of one through those operations, forward and backward, in `dtype`.
    """
    if backend_name() != "torch" or dtype == "float32":
        return None
    import torch

    device = keras.ops.zeros(()).device
    try:
        _torch_network_probe(getattr(torch, dtype), device)
    except (RuntimeError, NotImplementedError) as error:
        reason = str(error).strip().splitlines()[0]
        return f"PyTorch {torch.__version__} cannot train in {dtype} on this {device.type} ({reason})."
    return None


def _torch_network_probe(dtype, device):
    """The network's operations in `dtype`, on NHWC data as the layers run them, then backward."""
    import torch

    def random(*shape):
        return torch.randn(*shape, device=device).to(dtype).requires_grad_()

    x = random(1, 4, 4, 8)
    h, _ = torch_conv2d_nhwc(x, random(3, 3, 8, 8), (1, 1), (1, 1, 1, 1), bias=random(8))
    h = keras.ops.silu(torch_group_norm_nhwc(h, 2, None, None, 1e-6).to(dtype))
    h, _ = torch_conv2d_nhwc(torch_upsample_nearest_nhwc(h, 2), random(3, 3, 8, 8), (2, 2), (0, 1, 0, 1))
    q, k, v = (torch_dense(h, random(8, 8), random(8)).reshape(1, 16, 1, 8) for _ in range(3))
    keras.ops.dot_product_attention(q, k, v).float().sum().backward()
