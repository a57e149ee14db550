"""Every private Keras and PyTorch attribute keras_ddpm reads or writes, each behind an accessor.

They were written against Keras 3.15 and PyTorch 2.13. Each accessor first checks that the
installed release's major.minor lies in the range it was tested with (`KERAS_TESTED`,
`TORCH_TESTED`) and that the attribute exists; otherwise it takes the public API, or returns None
so that its caller takes the plain path. A new release then makes keras_ddpm slower, not wrong.
"""

import collections
import functools
import inspect
import re

import keras

# The first and the last major.minor release the accessors were tested with.
KERAS_TESTED = ((3, 15), (3, 15))
TORCH_TESTED = ((2, 13), (2, 13))


@functools.lru_cache(maxsize=8)
def _within(version, tested):
    major, minor = re.match(r"(\d+)\.(\d+)", str(version)).groups()
    first, last = tested
    return first <= (int(major), int(minor)) <= last


def keras_tested():
    """Whether the installed Keras is a release the Keras accessors here were tested with."""
    return _within(keras.version(), KERAS_TESTED)


def torch_tested():
    """Whether the installed PyTorch is a release the torch accessors here were tested with."""
    import torch

    return _within(torch.__version__, TORCH_TESTED)


def _private(owner, name, tested):
    """`owner`'s private attribute `name`, or None where the release is untested or has none."""
    return getattr(owner, name, None) if tested() else None


# Keras.


def flatten_layers(layer):
    """Every layer inside `layer`, nested ones included (`layer` itself left out).

    Keras' own walk is private (`_flatten_layers`); the fallback walks `Model.layers` and the
    public instance attributes that hold layers (or lists, tuples or dicts of them).
    """
    walk = _private(layer, "_flatten_layers", keras_tested)
    if walk is not None:
        return list(walk(include_self=False))
    found, seen = [], {id(layer)}
    pending = collections.deque(_sublayers(layer))
    while pending:
        sublayer = pending.popleft()
        if id(sublayer) in seen:
            continue
        seen.add(id(sublayer))
        found.append(sublayer)
        pending.extend(_sublayers(sublayer))
    return found


def _sublayers(layer):
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    # The instance's own attributes (on PyTorch, a layer's sublayers are torch submodules, which
    # `dir` lists too).
    names = sorted(set(dir(layer)) - set(dir(type(layer))))
    children = []
    for name in names:
        if name.startswith("_"):
            continue
        value = getattr(layer, name, None)
        if isinstance(value, dict):
            value = list(value.values())
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, keras.layers.Layer):
                children.append(item)
    return children


def learning_rate_schedule(optimizer):
    """The learning rate `optimizer` was given: a `LearningRateSchedule` or a number.

    The public `optimizer.learning_rate` evaluates a schedule at the optimizer's own step; the
    schedule itself is private (`_learning_rate`). The fallback rebuilds it from the optimizer's
    config.
    """
    learning_rate = _private(optimizer, "_learning_rate", keras_tested)
    if learning_rate is not None:
        return learning_rate
    return keras.saving.deserialize_keras_object(optimizer.get_config()["learning_rate"])


def run_functional(model, inputs, call):
    """The output of functional `model` on `inputs` (a list, in `model.inputs`' order), each node
    of its graph computed by `call(operation, *args, **kwargs)` in place of Keras' call of the
    operation. None where this Keras is untested or `model` is not functional: the caller then
    calls `model`. Keras' graph walk is private (`Function._run_through_graph`)."""
    run = _private(model, "_run_through_graph", keras_tested)
    if run is None or not hasattr(model, "_nodes_by_depth"):
        return None
    outputs = run(inputs, operation_fn=lambda operation: functools.partial(call, operation))
    return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs


def autocast_scope_open():
    """Whether a Keras autocast scope (a mixed-precision layer's call) is open; True where this
    Keras is untested, so that the caller keeps Keras' own calls."""
    if not keras_tested():
        return True
    from keras.src import backend

    return backend.get_autocast_scope() is not None


def call_accepts_training(layer):
    """Whether `layer.call` takes a `training` argument (Keras' `_call_has_training_arg`, or the
    signature of `call`)."""
    accepts = _private(layer, "_call_has_training_arg", keras_tested)
    if accepts is not None:
        return accepts
    return "training" in inspect.signature(layer.call).parameters


AdamInternals = collections.namedtuple("AdamInternals", "momentums velocities apply_weight_decay")


def adam_internals(optimizer, variables):
    """Keras' Adam(W) state of `variables`: their first and second moments (Keras variables, in
    the order of `variables`) and the optimizer's decoupled weight decay step
    (`apply_weight_decay(variables)`, as Keras applies it before the update). None where this
    Keras is untested or lacks one of them: the caller then lets `optimizer.apply` update."""
    names = ("_momentums", "_velocities", "_get_variable_index", "_apply_weight_decay")
    found = [_private(optimizer, name, keras_tested) for name in names]
    if any(item is None for item in found):
        return None
    momentums, velocities, index, apply_weight_decay = found
    return AdamInternals(
        [momentums[index(v)] for v in variables],
        [velocities[index(v)] for v in variables],
        apply_weight_decay,
    )


def distribute_strategy(model):
    """The `tf.distribute` strategy `model` was created under; None where it was created outside
    any. Keras records it privately (`_distribute_strategy`); the fallback, its public
    `model.distribute_strategy`, also names a strategy whose scope is open now."""
    if keras_tested() and hasattr(model, "_distribute_strategy"):
        return model._distribute_strategy
    import tensorflow as tf

    strategy = model.distribute_strategy  # the default strategy where there is none
    if tf.distribute.has_strategy() or strategy is not tf.distribute.get_strategy():
        return strategy
    return None


def detach_from_strategy(model):
    """Makes Keras treat `model` as created outside any `tf.distribute` strategy: `fit` then
    runs under the strategy whose scope is open, and builds what it lacks when it traces its step
    rather than from a batch of a throwaway iterator. Returns False, changing nothing, where this
    Keras is untested."""
    if not (keras_tested() and hasattr(model, "_distribute_strategy")):
        return False
    model._distribute_strategy = None
    return True


def set_torch_value(variable, tensor):
    """Makes torch `tensor` the storage of Keras `variable` (same shape and dtype; the caller
    chooses its memory layout, which `variable.assign` would not keep). Returns False, changing
    nothing, where this Keras or PyTorch is untested or the variable has no `_value`."""
    import torch

    if not (keras_tested() and torch_tested() and hasattr(variable, "_value")):
        return False
    requires_grad = variable.value.requires_grad
    variable._value = torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return True


# PyTorch.


def tensor_version(tensor):
    """torch's counter of in-place changes to `tensor` (private `_version`); None where this
    PyTorch is untested or has none, so that a cache keyed on it is not kept."""
    return _private(tensor, "_version", torch_tested)


def fused_adam():
    """`torch._fused_adam_` (one pass over each weight, its gradient and its moments); None where
    this PyTorch is untested or has none: the caller then runs Keras' Adam."""
    import torch

    return _private(torch, "_fused_adam_", torch_tested)


def foreach_norm(tensors):
    """The L2 norm of each tensor: `torch._foreach_norm`, or one `vector_norm` a tensor."""
    import torch

    norm = _private(torch, "_foreach_norm", torch_tested)
    if norm is not None:
        return norm(tensors)
    return [torch.linalg.vector_norm(tensor) for tensor in tensors]


def foreach_mul_(tensors, scalar):
    """Multiplies every tensor by `scalar` in place: `torch._foreach_mul_`, or one `mul_` each."""
    import torch

    multiply = _private(torch, "_foreach_mul_", torch_tested)
    if multiply is not None:
        multiply(tensors, scalar)
        return
    for tensor in tensors:
        tensor.mul_(scalar)


def foreach_lerp_(tensors, ends, weight):
    """tensor += weight * (end - tensor) for each pair, in place: `torch._foreach_lerp_`, or one
    `lerp_` each. `weight`: a number, or a 0-dim tensor (read on the device: passed as one
    weight per pair, since torch's Scalar overload would read a tensor on the host)."""
    import torch

    lerp = _private(torch, "_foreach_lerp_", torch_tested)
    if lerp is not None:
        lerp(tensors, ends, [weight] * len(tensors) if torch.is_tensor(weight) else weight)
        return
    for tensor, end in zip(tensors, ends):
        tensor.lerp_(end, weight)
