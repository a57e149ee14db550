"""The checks every layer of keras_ddpm.layers passes (after Keras' own
`keras.src.testing.TestCase.run_layer_test`, without importing keras.src): output shape and dtype,
a `get_config` / `from_config` round trip through JSON, a `.keras` round trip, and equality with
Keras' own layer where ours stands in for one."""

import collections
import json

import keras
import numpy as np
from keras import ops

Checked = collections.namedtuple("Checked", "layer inputs outputs reference")


def check_layer(
    layer_cls,
    init_kwargs,
    input_shape=None,
    expected_output_shape=None,
    *,
    tmp_path,
    input_dtype="float32",
    input_data=None,
    expected_output_dtype="float32",
    reference=None,
    check_gradients=False,
    weight_scale=0.1,
    rtol=1e-7,
    atol=1e-5,
    grad_rtol=1e-5,
    grad_atol=1e-5,
):
    """Builds `layer_cls(**init_kwargs)` on random inputs and checks it; returns a `Checked`.

    input_shape: a shape tuple, or a list of them for a layer of several inputs (with
        `input_dtype` a dtype or a list of them: integers are drawn from [0, 1000)); or
        `input_data`, NumPy arrays, instead.
    expected_output_shape: the output's shape, batch included.
    tmp_path: a folder for the `.keras` file (pytest's `tmp_path`).
    reference: a factory of the Keras layer that ours must equal once it has our weights (in
        the same order); with `check_gradients`, the gradients of sum(output^2) with respect to
        the weights and the float inputs must equal too.

    The weights are drawn anew (N(0, weight_scale^2), plus 1 for GroupNorm's gamma) before
    anything is compared: zero-initialised weights would make the round trips trivial.
    """
    if (input_shape is None) == (input_data is None):
        raise ValueError("Pass one of input_shape and input_data.")
    inputs = _make_inputs(input_shape, input_dtype) if input_data is None else input_data
    multiple = isinstance(inputs, (list, tuple))
    arrays = list(inputs) if multiple else [inputs]

    def call(layer, xs):
        tensors = [ops.convert_to_tensor(x) for x in xs]
        return layer(tensors if multiple else tensors[0])

    layer = layer_cls(**init_kwargs)
    output = call(layer, arrays)
    assert layer.built
    assert tuple(output.shape) == tuple(expected_output_shape)
    assert keras.backend.standardize_dtype(output.dtype) == expected_output_dtype
    assert tuple(layer.compute_output_shape(_shapes(arrays, multiple))) == tuple(
        expected_output_shape
    )
    randomize(layer, weight_scale)
    outputs = ops.convert_to_numpy(call(layer, arrays))

    # get_config -> JSON -> from_config: the same config, and the same outputs with our weights.
    config = layer.get_config()
    clone = layer_cls.from_config(json.loads(json.dumps(config)))
    assert type(clone) is layer_cls
    assert clone.get_config() == config
    call(clone, arrays)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(ops.convert_to_numpy(call(clone, arrays)), outputs)
    # The registered name brings our class back, not Keras' namesake.
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is layer_cls and revived.get_config() == config

    # .keras: a functional model around the layer, loaded in safe mode, gives the same outputs.
    symbolic = [
        keras.Input(shape=x.shape[1:], dtype=x.dtype, name=f"x{i}") for i, x in enumerate(arrays)
    ]
    symbolic_output = layer(symbolic if multiple else symbolic[0])
    assert tuple(symbolic_output.shape) == (None, *expected_output_shape[1:])
    model = keras.Model(symbolic, symbolic_output)
    path = str(tmp_path / f"{layer.name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer(layer.name)) is layer_cls
    assert loaded.get_layer(layer.name).get_config() == config
    loaded_outputs = ops.convert_to_numpy(loaded([ops.convert_to_tensor(x) for x in arrays]))
    np.testing.assert_array_equal(loaded_outputs, outputs)

    ref = None
    if reference is not None:
        ref = reference()
        call(ref, arrays)
        assert [w.shape for w in ref.weights] == [w.shape for w in layer.weights]
        ref.set_weights(layer.get_weights())
        expected = ops.convert_to_numpy(call(ref, arrays))
        np.testing.assert_allclose(outputs, expected, rtol=rtol, atol=atol)
        if check_gradients:
            for ours, theirs in zip(
                gradients(layer, arrays, multiple), gradients(ref, arrays, multiple)
            ):
                np.testing.assert_allclose(ours, theirs, rtol=grad_rtol, atol=grad_atol)
    return Checked(layer, inputs, outputs, ref)


def randomize(layer, scale=0.1, seed=1):
    """Assigns N(0, scale^2) values to every weight of `layer` (1 + those to GroupNorm's gamma)."""
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        value = rng.standard_normal(weight.shape).astype("float32") * scale
        weight.assign(value + ("gamma" in weight.path))


def gradients(layer, arrays, multiple=False):
    """The gradients of sum(layer(inputs)^2) with respect to the layer's trainable weights, then
    its float inputs, as NumPy arrays (each backend takes gradients its own way)."""
    floats = [i for i, x in enumerate(arrays) if np.issubdtype(x.dtype, np.floating)]
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(x) for x in arrays]
        with tf.GradientTape() as tape:
            tape.watch([tensors[i] for i in floats])
            output = layer(tensors if multiple else tensors[0])
            loss = tf.reduce_sum(tf.square(output))
        sources = list(layer.trainable_weights) + [tensors[i] for i in floats]
        grads = tape.gradient(loss, sources)
    elif backend == "torch":
        import torch

        tensors = [torch.from_numpy(x) for x in arrays]
        for i in floats:
            tensors[i].requires_grad_(True)
        output = layer(tensors if multiple else tensors[0])
        sources = [w.value for w in layer.trainable_weights] + [tensors[i] for i in floats]
        grads = torch.autograd.grad(output.square().sum(), sources)
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        non_trainable = [v.value for v in layer.non_trainable_variables]

        def loss(trainable, float_inputs):
            tensors = [jnp.asarray(x) for x in arrays]
            for i, x in zip(floats, float_inputs):
                tensors[i] = x
            output, _ = layer.stateless_call(
                trainable, non_trainable, tensors if multiple else tensors[0]
            )
            return jnp.sum(jnp.square(output))

        trainable = [v.value for v in layer.trainable_variables]
        weight_grads, input_grads = jax.grad(loss, argnums=(0, 1))(
            trainable, [jnp.asarray(arrays[i]) for i in floats]
        )
        grads = list(weight_grads) + list(input_grads)
    else:
        raise NotImplementedError(backend)
    return [ops.convert_to_numpy(g) for g in grads]


def _make_inputs(input_shape, input_dtype):
    rng = np.random.default_rng(0)
    multiple = isinstance(input_shape, list)
    shapes = input_shape if multiple else [input_shape]
    dtypes = input_dtype if isinstance(input_dtype, (list, tuple)) else [input_dtype] * len(shapes)
    arrays = []
    for shape, dtype in zip(shapes, dtypes):
        if np.issubdtype(np.dtype(dtype), np.integer):
            arrays.append(rng.integers(0, 1000, shape).astype(dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays if multiple else arrays[0]


def _shapes(arrays, multiple):
    shapes = [tuple(x.shape) for x in arrays]
    return shapes if multiple else shapes[0]
