"""The PyTorch backend (`keras_ddpm.backend.torch`).

Its NHWC layer kernels (`conv2d_nhwc` and the group norm beside it) against Keras' own, where
torch leaves oneDNN for its fallback convolution (`slow_conv2d`: a batch of 1, float16 or bfloat16
on a CPU without native support, oneDNN switched off); the tiny preset trained at every batch size
and precision; the fused Adam step against Keras' Adam and AdamW.

The fallback needs a kernel with exactly torch's channels_last strides: along an axis of size 1
(one output channel) other strides crashed its backward pass ("grad_weight must be contiguous").
"""

import contextlib
import dataclasses
import json
import os

import keras
import numpy as np
import pytest
from conftest import REPO
from conftest import randomize_weights
from conftest import run_python
from keras import ops

from keras_ddpm import DiffusionModel
from keras_ddpm import backend
from keras_ddpm import layers
from keras_ddpm import training
from keras_ddpm.config import get_preset
from keras_ddpm.optimizers import make_optimizer
from keras_ddpm.unet import build_unet

ON_TORCH = keras.backend.backend() == "torch"
torch_only = pytest.mark.skipif(
    not ON_TORCH, reason="PyTorch's own kernels; the other backends run Keras' layers"
)
if ON_TORCH:
    from keras_ddpm.backend import torch as torch_backend
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
TOLERANCE = {
    "float32": 1e-4,
    "bfloat16": 3e-2,
    "float16": 3e-3,
}  # relative to the largest value compared
BATCH_SIZES = (1, 2, 3, 7, 8)


@contextlib.contextmanager
def onednn(enabled):
    """oneDNN on or off for torch's CPU convolutions: off, every one takes the fallback."""
    import torch

    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def nhwc_input(shape, seed, contiguous=True):
    """A float32 NHWC torch tensor; not `contiguous`: the same values in a (N, W, H, C) buffer, as a
    transposing data pipeline hands them over (permuted to NCHW, neither contiguous nor
    channels_last)."""
    import torch

    values = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    if contiguous:
        return torch.from_numpy(values).requires_grad_()
    return (
        torch.from_numpy(np.ascontiguousarray(values.transpose(0, 2, 1, 3)))
        .transpose(1, 2)
        .requires_grad_()
    )


def gradients(layer, x, call=None, seed=0):
    """layer(x) (or call(x)), and the gradients of <layer(x), g> for a fixed random g by x and by
    the layer's weights, as float32 numpy arrays."""
    import torch

    y = (call or layer)(x).float()
    g = torch.from_numpy(
        np.random.default_rng(seed).standard_normal(tuple(y.shape)).astype("float32")
    )
    grads = torch.autograd.grad((y * g).sum(), [x, *(w.value for w in layer.trainable_weights)])
    return [t.detach().float().numpy() for t in (y, *grads)]


def with_keras_twin(layer, twin, input_shape, seed, twin_input_shape=None):
    """`layer` and `twin` (the Keras layer it subclasses) built, with the same random weights."""
    rng = np.random.default_rng(seed)
    layer.build(input_shape)
    twin.build(twin_input_shape or input_shape)
    for ours, theirs in zip(layer.weights, twin.weights):
        value = 0.3 * rng.standard_normal(ours.shape).astype("float32") + (
            1.0 if "gamma" in ours.path else 0.0
        )
        ours.assign(value)
        theirs.assign(value)
    return layer, twin


def assert_close(ours, theirs, dtype):
    for a, b in zip(ours, theirs):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=0, atol=TOLERANCE[dtype] * max(np.abs(b).max(), 1e-3))


@torch_only
@pytest.mark.parametrize("shape", [(3, 3, 16, 1), (3, 3, 1, 16), (1, 1, 8, 3), (3, 3, 16, 32)])
def test_kernels_are_stored_with_torch_channels_last_strides(shape):
    # The (out, in, kh, kw) view of a stored kernel has the strides torch gives a channels_last
    # tensor of that shape (the one-output-channel kernel had Keras' strides), and is no copy.
    import torch

    conv = layers.Conv2D(shape[3], shape[:2], padding="same")
    conv.build((None, 8, 8, shape[2]))
    view = torch.permute(conv.kernel.value, (3, 2, 0, 1))
    assert view.stride() == torch.empty(view.shape, memory_format=torch.channels_last).stride()
    assert (
        torch_backend._kernel(conv.kernel.value, torch.float32).data_ptr()
        == conv.kernel.value.data_ptr()
    )


CONVOLUTIONS = {  # name: (input shape, filters, kernel size, strides, groups)
    "one_output_channel_batch_1": (
        (1, 8, 8, 16),
        1,
        3,
        1,
        1,
    ),  # conv_out of a grayscale model: the crash
    "one_input_channel_batch_1": ((1, 5, 5, 1), 8, 3, 1, 1),
    "odd_size_stride_2": ((2, 7, 9, 4), 6, 3, 2, 1),  # "same": one zero row and column on each side
    "even_size_stride_2": ((3, 8, 6, 5), 5, 3, 2, 1),  # "same": the odd zero row and column after
    "one_by_one_map": ((1, 1, 1, 8), 8, 3, 1, 1),
    "one_by_one_kernel": ((2, 6, 6, 3), 5, 1, 1, 1),
    "grouped_3_channels_a_group_batch_1": (
        (1, 6, 6, 12),
        4,
        3,
        1,
        4,
    ),  # Keras' own path (groups > 1)
    "non_contiguous_input": ((2, 6, 5, 4), 3, 3, 1, 1),
    "non_contiguous_input_batch_1": ((1, 7, 7, 4), 1, 3, 2, 1),
}


@torch_only
@pytest.mark.parametrize("dtype", list(POLICIES))
@pytest.mark.parametrize("case", list(CONVOLUTIONS))
def test_conv_matches_keras_forward_and_backward(case, dtype):
    # Ours against Keras' own torch convolution with the same weights: the output and the
    # gradients by input, kernel and bias, through oneDNN and through the fallback. Keras' twin
    # convolves contiguous NCHW data: with NHWC data its torch convolution crashes in the fallback
    # as ours did (it views a one-output-channel kernel the same way; Keras 3.15.1).
    import torch

    shape, filters, kernel_size, strides, groups = CONVOLUTIONS[case]
    config = dict(
        filters=filters,
        kernel_size=kernel_size,
        strides=strides,
        groups=groups,
        padding="same",
        dtype=POLICIES[dtype],
    )
    nchw = (shape[0], shape[3], shape[1], shape[2])
    keras_conv = keras.layers.Conv2D(**config, data_format="channels_first")
    conv, keras_conv = with_keras_twin(
        layers.Conv2D(**config), keras_conv, shape, seed=1, twin_input_shape=nchw
    )

    def keras_nhwc(x):
        return torch.permute(keras_conv(torch.permute(x, (0, 3, 1, 2)).contiguous()), (0, 2, 3, 1))

    for enabled in (True, False):
        with onednn(enabled):
            x = nhwc_input(shape, seed=2, contiguous="non_contiguous" not in case)
            ours, theirs = gradients(conv, x), gradients(keras_conv, x, call=keras_nhwc)
        assert ours[0].shape == (
            shape[0],
            -(-shape[1] // strides),
            -(-shape[2] // strides),
            filters,
        )
        assert_close(ours, theirs, dtype)


@torch_only
@pytest.mark.parametrize("dtype", list(POLICIES))
@pytest.mark.parametrize(
    "shape, groups",
    [((1, 1, 1, 6), 2), ((3, 5, 3, 12), 4), ((1, 4, 4, 10), 5), ((2, 3, 3, 12), 12)],
)
@pytest.mark.parametrize("contiguous", [True, False])
def test_group_norm_matches_keras_at_odd_group_sizes(shape, groups, dtype, contiguous):
    # 3, 5, 2 and 1 channels a group (not a multiple of 8), 1x1 maps, a batch of 1, transposed
    # input.
    config = dict(groups=groups, epsilon=1e-6, dtype=POLICIES[dtype])
    norm, keras_norm = with_keras_twin(
        layers.GroupNormalization(**config), keras.layers.GroupNormalization(**config), shape, 3
    )
    x = nhwc_input(shape, seed=4, contiguous=contiguous)
    assert_close(gradients(norm, x), gradients(keras_norm, x), dtype)


@torch_only
def test_upsample_and_downsample_take_transposed_input():
    # A non-contiguous NHWC input gives the same results and gradients as its contiguous copy.
    import torch

    for block, shape in ((layers.Upsample(4), (1, 3, 5, 2)), (layers.Downsample(4), (2, 7, 5, 3))):
        block.build(shape)
        with torch.no_grad():
            block.conv.kernel.value.normal_()
        contiguous, transposed = (
            gradients(block, nhwc_input(shape, 5, c), call=block.call) for c in (True, False)
        )
        assert_close(transposed, contiguous, "float32")


def test_attention_block_over_a_one_by_one_map():
    # One position: softmax over one key is 1, so the block is x + proj_out(v(GN(x))), whatever q
    # and k.
    block = layers.AttentionBlock(num_groups=2)
    x = np.random.default_rng(6).standard_normal((3, 1, 1, 6)).astype("float32")
    block.build(x.shape)
    for dense in (block.q, block.k, block.v, block.proj_out):
        dense.kernel.assign(np.random.default_rng(7).standard_normal((6, 6)).astype("float32"))
    expected = x + ops.convert_to_numpy(block.proj_out(block.v(block.norm(x))))
    np.testing.assert_allclose(ops.convert_to_numpy(block(x)), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected - x).max() > 0.1


class FixedDraws:
    """`keras.random.normal` and `randint` from a NumPy generator: the same t and noise on every
    backend (Keras' own generators differ between them), for eager training steps."""

    def __init__(self, monkeypatch, seed):
        self.rng = np.random.default_rng(seed)
        monkeypatch.setattr(keras.random, "normal", self.normal)
        monkeypatch.setattr(keras.random, "randint", self.randint)

    def normal(self, shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return ops.convert_to_tensor(self.rng.normal(mean, stddev, shape).astype("float32"))

    def randint(self, shape, minval, maxval, dtype="int32", seed=None):
        return ops.convert_to_tensor(self.rng.integers(minval, maxval, shape).astype(dtype))


def train_at_every_batch_size(mode, monkeypatch, sample=True):
    """Trains one randomised tiny model a step at each batch size in turn (t and noise from
    `FixedDraws`), then, with `sample`, samples that many images (2 DDIM steps); returns the
    losses of the steps and the images."""
    FixedDraws(monkeypatch, seed=0)
    training.set_mixed_precision(mode)
    try:
        model = randomize_weights(DiffusionModel.from_preset("tiny", seed=0), seed=1)
        model.compile(
            run_eagerly=True
        )  # eager: NumPy draws inside the step (TF would trace them once)
        images = (
            np.random.default_rng(2).uniform(-1, 1, (max(BATCH_SIZES), 16, 16, 1)).astype("float32")
        )
        losses = []
        logged = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"]))
        )
        for batch_size in BATCH_SIZES:
            model.fit(
                images[:batch_size],
                batch_size=batch_size,
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=[logged],
            )
        samples = (
            [model.generate(batch_size, steps=2, seed=3) for batch_size in BATCH_SIZES]
            if sample
            else []
        )
    finally:
        training.set_mixed_precision("no")
    assert int(model.optimizer.iterations) == len(BATCH_SIZES)
    return losses, samples


# This module and the conftest it imports, loaded from their files (tests/ is not a package).
TENSORFLOW_LOSSES = """
import importlib.util, json, sys
import pytest

def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

load("conftest", {conftest!r})
this = load("test_torch", {this!r})
with pytest.MonkeyPatch.context() as monkeypatch:
    print(json.dumps(this.train_at_every_batch_size("no", monkeypatch, sample=False)[0]))
"""


@torch_only
@pytest.mark.slow
def test_float32_training_at_every_batch_size_matches_tensorflow(monkeypatch):
    # Batch 1 crashed in the backward pass; every batch size must give TensorFlow's losses.
    losses, samples = train_at_every_batch_size("no", monkeypatch)
    code = TENSORFLOW_LOSSES.format(
        conftest=os.path.join(REPO, "tests", "conftest.py"), this=__file__
    )
    tensorflow = json.loads(run_python(code, "tensorflow").strip().splitlines()[-1])
    np.testing.assert_allclose(losses, tensorflow, rtol=1e-4)
    assert len(set(losses)) == len(losses) and 0.3 < min(losses)  # a real, varying loss
    for batch_size, images in zip(BATCH_SIZES, samples):
        assert images.shape == (batch_size, 16, 16, 1) and np.isfinite(images).all()


@torch_only
@pytest.mark.parametrize("mode, use_onednn", [("bf16", True), ("bf16", False), ("fp16", True)])
def test_mixed_precision_trains_and_samples_at_every_batch_size(mode, use_onednn, monkeypatch):
    # bf16 through oneDNN where the CPU has it, and through the fallback as on one without it (it
    # crashed there); float16 convolutions always take the fallback on a CPU.
    with onednn(use_onednn):
        losses, samples = train_at_every_batch_size(mode, monkeypatch)
    assert np.isfinite(losses).all() and 0.3 < min(losses) and max(losses) < 3
    for batch_size, images in zip(BATCH_SIZES, samples):
        assert images.shape == (batch_size, 16, 16, 1) and np.isfinite(images).all()


@torch_only
def test_a_dtype_torch_cannot_compute_stops_before_training(monkeypatch):
    # PyTorch 2.13 computes the network in bf16 and fp16 on a CPU; where a kernel is missing,
    # setting the policy fails with one sentence, before any model is built.
    assert (
        backend.compute_dtype_problem("float16") is None
        and backend.compute_dtype_problem("bfloat16") is None
    )

    def missing_kernel(dtype, device):
        raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'Half'\nmore lines")

    monkeypatch.setattr(torch_backend, "_network_probe", missing_kernel)
    torch_backend.compute_dtype_problem.cache_clear()
    sentence = r"^--mixed-precision fp16: PyTorch \S+ cannot train in float16 on this cpu "
    sentence += r"\(\"slow_conv2d_cpu\" not implemented for 'Half'\)\.$"
    try:
        with pytest.raises(ValueError, match=sentence):
            training.set_mixed_precision("fp16")
        assert keras.config.dtype_policy().name == "float32"
        training.set_mixed_precision("no")  # float32 needs no probe
    finally:
        torch_backend.compute_dtype_problem.cache_clear()


@torch_only
@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_fused_update_is_keras_adam(kind):
    # The PyTorch train step clips with multi-tensor kernels and updates with torch's fused Adam
    # (`_apply_gradients`); over warm-up steps, with clipping active, it must give Keras' result.
    import torch

    config = get_preset("tiny").train
    config = dataclasses.replace(
        config,
        optimizer=kind,
        weight_decay=0.1 if kind == "adamw" else 0.0,
        warmup_steps=3,
        grad_clip=0.5,
    )
    rng = np.random.default_rng(0)
    shapes = [(3, 3, 4, 8), (8,), (16, 8)]
    start = [rng.standard_normal(shape).astype("float32") for shape in shapes]
    runs = []
    for fused in (True, False):
        variables = [keras.Variable(value) for value in start]
        if (
            fused
        ):  # a convolution kernel in torch's memory order, as layers.Conv2D keeps it on PyTorch
            layout = backend.conv_kernel_initializer(keras.initializers.Constant(start[0]))
            variables[0] = keras.Variable(layout, shape=shapes[0])
            assert not variables[0].value.is_contiguous()
        optimizer = make_optimizer(config)
        optimizer.epsilon = 0.3  # large enough that a wrong epsilon shows
        optimizer.build(variables)
        for step in range(4):
            gradients = [
                torch.from_numpy(np.random.default_rng(step).standard_normal(s).astype("float32"))
                for s in shapes
            ]
            with torch.no_grad():
                if fused:
                    plan = torch_backend._AdamPlan(optimizer, variables)
                    assert plan.fused
                    torch_backend._apply_gradients(optimizer, gradients, variables, plan)
                else:
                    optimizer.apply(gradients, variables)
        assert int(optimizer.iterations) == 4
        if fused:  # Adam's moments were given the kernel's memory order
            assert optimizer.variables[2].value.stride() == variables[0].value.stride()
        runs.append([ops.convert_to_numpy(v) for v in variables + optimizer.variables])
    for ours, keras_value in zip(*runs):
        np.testing.assert_allclose(ours, keras_value, rtol=1e-5, atol=1e-7)
    assert not np.allclose(runs[0][0], start[0])


# Issue 24: the fused step reads no device value on the host, and its body runs as a CUDA graph.


@torch_only
@pytest.mark.parametrize(
    "schedule, warmup", [("constant", 0), ("constant", 7), ("cosine", 0), ("cosine", 9)]
)
def test_host_learning_rate_is_keras_schedule(schedule, warmup):
    # The learning rate the step computes on the host (NumPy float32) against Keras' schedule
    # (float32 torch ops), through warm-up, the cosine and past its end.
    from keras_ddpm.optimizers import make_learning_rate

    config = dataclasses.replace(
        get_preset("tiny").train, lr_schedule=schedule, warmup_steps=warmup, train_steps=60
    )
    learning_rate = make_learning_rate(config)
    steps = range(80)
    keras_values = [float(ops.convert_to_numpy(learning_rate(step))) for step in steps]
    host_values = [torch_backend.learning_rate_on_host(learning_rate, step) for step in steps]
    # Within 1e-6 of each value or of the peak: at the cosine's tail 1 + cos(pi x) cancels, and
    # NumPy's float32 cos and torch's differ there by an ulp (a few 1e-8 of the peak).
    peak = config.learning_rate
    np.testing.assert_allclose(host_values, keras_values, rtol=1e-6, atol=1e-6 * peak)
    assert len(set(keras_values)) >= (1 if schedule == "constant" and warmup == 0 else warmup)
    # A schedule it has no formula for: Keras' own, evaluated on the CPU.
    other = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5)
    assert torch_backend.learning_rate_on_host(other, 13) == float(ops.convert_to_numpy(other(13)))


@torch_only
@pytest.mark.parametrize("power", [0.0, 2 / 3, 0.75])
def test_host_ema_decay_is_ema_decay_at(power):
    model = DiffusionModel(
        get_preset("tiny").replace(ema_decay=0.9999, ema_warmup_power=power), seed=0
    )
    for iterations in range(0, 3000, 7):
        expected = float(ops.convert_to_numpy(model.ema_decay_at(iterations)))
        host = torch_backend.ema_decay_on_host(model.config.train, iterations)
        np.testing.assert_allclose(host, expected, rtol=1e-6, atol=0)


def tiny_model(**overrides):
    """A randomised tiny model trained with a warm-up and an EMA warm-up (both change with the
    step), compiled."""
    config = get_preset("tiny").replace(warmup_steps=5, ema_warmup_power=0.75, **overrides)
    model = randomize_weights(DiffusionModel(config, seed=0), seed=1)
    model.compile()
    return model


def train_steps(model, count, seed=2):
    """`count` training steps of `model` (fit's `train_step`) on fixed batches; their losses."""
    import torch

    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(count):
        images = torch.from_numpy(rng.uniform(-1, 1, (4, 16, 16, 1)).astype("float32"))
        model.train_step((images,))
        losses.append(float(model.loss_tracker.result()))
    return losses


def state(model):
    """Every variable of the model and its optimizer (weights, EMA, Adam's moments, iterations,
    seed states), as NumPy arrays."""
    return [ops.convert_to_numpy(v) for v in model.variables + model.optimizer.variables]


@contextlib.contextmanager
def host_reads():
    """Records where the torch step reads a tensor's value on the host (`float()`, `int()`,
    `bool()`, `.item()`, `.tolist()`, `.numpy()`): the file:line of each read made outside Keras'
    random draws (keras/src/backend/torch/random.py seeds a torch.Generator from `int(seed)`)."""
    import sys
    import traceback

    import torch

    reads = []
    names = ("__float__", "__int__", "__bool__", "__index__", "item", "tolist", "numpy")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def wrap(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            stack = traceback.extract_stack(sys._getframe(1))
            if not any("random" in frame.filename and "keras" in frame.filename for frame in stack):
                reads.append(f"{name} at {stack[-1].filename}:{stack[-1].lineno}")
            return original(self, *args, **kwargs)

        return read

    for name in names:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@torch_only
def test_fused_step_reads_no_device_value():
    # After the first step (which builds the step plan and reads `optimizer.iterations` once), a
    # step reads nothing on the host: not the step, the learning rate or the EMA decay.
    model = tiny_model()
    train_steps(model, 1)
    assert model._torch_step_plan.adam.fused
    import torch

    images = torch.zeros((4, 16, 16, 1))
    with host_reads() as reads:
        for _ in range(3):
            model.train_step((images,))
    assert reads == []
    assert int(model.optimizer.iterations) == 4


@torch_only
def test_host_step_counter_follows_assignments_and_restores():
    # The plan's host counter is read again whenever `optimizer.iterations` was written by anyone
    # else (torch's version counter): restoring an earlier state in place, the model continues
    # exactly as a run that never went further.
    straight = tiny_model()
    train_steps(straight, 3)
    train_steps(straight, 4, seed=5)
    model = tiny_model()
    train_steps(model, 3)
    saved = state(model)
    train_steps(model, 2, seed=9)  # steps that the restore undoes
    assert model._torch_step_plan.adam.iterations() == 5
    for variable, value in zip(model.variables + model.optimizer.variables, saved):
        variable.assign(value)
    assert model._torch_step_plan.adam.iterations() == 3
    train_steps(model, 4, seed=5)
    for ours, expected in zip(state(model), state(straight)):
        np.testing.assert_array_equal(ours, expected)
    model.optimizer.iterations.assign(40)  # e.g. a checkpoint's step
    assert model._torch_step_plan.adam.iterations() == 40


@torch_only
def test_untested_torch_reads_the_step_every_time(monkeypatch):
    # Without torch's version counter (an untested torch), the counter is read at every step.
    model = tiny_model()
    train_steps(model, 2)
    monkeypatch.setattr(torch_backend.internals, "tensor_version", lambda tensor: None)
    plan = model._torch_step_plan.adam
    model.optimizer.iterations.value.data.fill_(11)  # in place, unseen by the version counter
    assert plan.iterations() == 11


def graphed_on_cpu(model, warmup):
    """`model`'s `_GraphedStep` run on a CPU: the captured body (`_GraphedStep.body`, static
    buffers and tensor scalars) run at each "replay", uncaptured."""
    plan = model._torch_step_plan
    graphed = torch_backend._GraphedStep(model, plan)
    graphed.WARMUP = warmup
    graphed._warm_up = lambda inputs, scalars: torch_backend._step_body(
        model, plan, inputs, scalars
    )

    def capture(inputs):
        graphed.static_inputs = [None if x is None else x.clone() for x in inputs]

        def replay():
            graphed.static_loss = graphed.body()

        graphed.replay = replay
        return True

    graphed._capture = capture
    plan.graph = graphed
    return graphed


@torch_only
@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_captured_step_body_is_the_eager_step(kind):
    # The step body a CUDA graph holds (static input buffers, Adam's step size and the EMA weight
    # as device tensors), run on a CPU uncaptured, against the eager step: the same losses,
    # weights, EMA weights and Adam moments, step by step.
    overrides = dict(optimizer=kind, weight_decay=0.05 if kind == "adamw" else 0.0)
    eager, graphed = tiny_model(**overrides), tiny_model(**overrides)
    train_steps(eager, 1)
    train_steps(graphed, 1)
    runner = graphed_on_cpu(graphed, warmup=1)
    losses = [train_steps(eager, 5, seed=3), train_steps(graphed, 5, seed=3)]
    assert runner.static_inputs is not None and runner.steps == 1  # warmed up, then replayed
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    for ours, expected in zip(state(graphed), state(eager)):
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    assert int(graphed.optimizer.iterations) == 6


@torch_only
def test_cuda_graph_option_on_a_cpu(capsys):
    # On a CPU with the default option, no graph and no message; asked for, one line saying why.
    model = tiny_model()
    train_steps(model, 1)
    assert model._torch_step_plan.graph is None
    assert "CUDA graphs" not in capsys.readouterr().err
    model = tiny_model(cuda_graph="on")
    train_steps(model, 2)
    assert model._torch_step_plan.graph is None
    assert capsys.readouterr().err.count("CUDA graphs: the model is on cpu") <= 1


def direct_call_case(policy="float32"):
    """A class-conditional tiny UNet with dropout under `policy` (random weights) and torch
    inputs for it."""
    import torch

    config = dataclasses.replace(get_preset("tiny").unet, dropout=0.3, num_classes=3)
    keras.config.set_dtype_policy(policy)
    try:
        network = build_unet(config)
    finally:
        keras.config.set_dtype_policy("float32")
    rng = np.random.default_rng(0)
    for weight in network.trainable_weights:
        weight.assign(rng.normal(0, 0.1, weight.shape) + ("gamma" in weight.path))
    inputs = [
        torch.as_tensor(rng.normal(size=(3, 16, 16, 1)).astype("float32")),
        torch.as_tensor([0, 40, 99], dtype=torch.int32),
        torch.as_tensor([0, 2, 3], dtype=torch.int32),
    ]
    return network, inputs


@torch_only
@pytest.mark.parametrize("training", [True, False])
def test_direct_layer_calls_equal_keras_calls(training):
    # The graph run with each layer's `call` (skipping `Layer.__call__`): the same output and
    # gradients as Keras' call of the network, dropout's draws included (Keras' torch dropout
    # without a seed draws from torch's global generator, seeded the same for both).
    import torch

    network, inputs = direct_call_case()

    def output_and_gradients(call):
        torch.manual_seed(0)
        for weight in network.trainable_weights:
            weight.value.grad = None
        output = call()
        assert output is not None and tuple(output.shape) == (3, 16, 16, 1)
        (output * output).sum().backward()
        gradients = [weight.value.grad.numpy() for weight in network.trainable_weights]
        return output.detach().numpy(), gradients

    direct = output_and_gradients(lambda: torch_backend.call_network(network, inputs, training))
    keras_call = output_and_gradients(lambda: network(inputs, training=training))
    np.testing.assert_array_equal(direct[0], keras_call[0])
    for ours, theirs in zip(direct[1], keras_call[1]):
        np.testing.assert_array_equal(ours, theirs)
    plain = output_and_gradients(lambda: network(inputs, training=not training))
    assert np.abs(plain[0] - direct[0]).max() > 1e-3  # dropout acts in training only


@torch_only
def test_direct_layer_calls_leave_mixed_precision_and_other_inputs_to_keras():
    # A mixed-precision network (autocast in Layer.__call__) and inputs Keras would convert
    # (NumPy arrays, float64) take Keras' call: `call_network` gives its output.
    import torch

    network, inputs = direct_call_case("mixed_bfloat16")
    assert torch_backend.call_network(network, inputs, False) is None
    np.testing.assert_array_equal(
        backend.call_network(network, inputs).detach().float().numpy(),
        network(inputs, training=False).detach().float().numpy(),
    )
    network, inputs = direct_call_case()
    assert torch_backend.call_network(network, inputs, False) is not None
    numpy_inputs = [x.numpy() for x in inputs]
    assert torch_backend.call_network(network, numpy_inputs, False) is None
    assert torch_backend.call_network(network, [inputs[0].double(), *inputs[1:]], False) is None
    np.testing.assert_allclose(
        backend.call_network(network, numpy_inputs).detach().numpy(),
        torch_backend.call_network(network, inputs, False).detach().numpy(),
        rtol=0,
        atol=1e-6,
    )
    assert isinstance(backend.call_network(network, numpy_inputs), torch.Tensor)
