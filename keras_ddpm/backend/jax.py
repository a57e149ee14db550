"""The JAX backend: its stateless training step (`jax.value_and_grad`), `jax.jit` compilation of
inference and sampling loops, `keras.distribution.DataParallel`, and XLA's CPU flags."""

import functools
import os

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
    return lambda *args: compiled([v.value for v in variables], *args)


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
