"""`keras_ddpm.backend.internals`: each accessor of private Keras and torch API, on the releases it
was written for and, with the version check failing, through its public (or plain) fallback."""

import dataclasses

import keras
import numpy as np
import pytest
from conftest import randomize_weights
from keras import ops

from keras_ddpm import DiffusionModel
from keras_ddpm import backend
from keras_ddpm.backend import internals
from keras_ddpm.config import UNetConfig
from keras_ddpm.config import get_preset
from keras_ddpm.flops import unet_forward_flops
from keras_ddpm.optimizers import learning_rate_at
from keras_ddpm.optimizers import make_optimizer
from keras_ddpm.unet import build_unet

ON_TORCH = backend.backend_name() == "torch"
UNET = UNetConfig(
    base_channels=16,
    channel_multipliers=(1, 2),
    attention_resolutions=(8,),
    num_groups=4,
    image_size=16,
)


@pytest.fixture
def untested_releases(monkeypatch):
    """Keras 3.99 and PyTorch 2.99 as `internals` reads them: every accessor takes its fallback."""
    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    if ON_TORCH:
        import torch

        monkeypatch.setattr(torch, "__version__", "2.99.0")


def test_the_installed_releases_are_the_tested_ones(untested_releases):
    # The pinned Keras 3.15 and torch 2.13 (pyproject.toml) take the private paths; the fixture
    # makes the check fail; major.minor is compared, not the patch release.
    assert internals._within("3.15.1", internals.KERAS_TESTED)
    assert internals._within("3.15.7rc1", internals.KERAS_TESTED)
    assert internals._within("2.13.0+cpu", internals.TORCH_TESTED)
    assert not internals._within("3.16.0", internals.KERAS_TESTED)
    assert not internals._within("3.14.2", internals.KERAS_TESTED)
    assert not internals._within("4.15.0", internals.KERAS_TESTED)
    assert not internals.keras_tested()
    if ON_TORCH:
        assert not internals.torch_tested()


def test_installed_releases_are_tested():
    assert internals.keras_tested()
    if ON_TORCH:
        assert internals.torch_tested()


def optimizers():
    tiny = get_preset("tiny")
    constant = make_optimizer(tiny.replace(warmup_steps=10).train)
    cosine = make_optimizer(
        tiny.replace(lr_schedule="cosine", warmup_steps=10, train_steps=110).train
    )
    adamw = make_optimizer(tiny.replace(optimizer="adamw", weight_decay=0.01, warmup_steps=0).train)
    scaled = keras.optimizers.LossScaleOptimizer(make_optimizer(tiny.train))
    return {
        "constant": constant,
        "cosine": cosine,
        "adamw": adamw,
        "loss_scaled": scaled,
        "float": keras.optimizers.Adam(3e-4),
    }


@pytest.mark.parametrize("name", ["constant", "cosine", "adamw", "loss_scaled", "float"])
def test_learning_rate_at_fallback_equals_the_private_path(name, monkeypatch):
    optimizer = optimizers()[name]
    steps = (0, 1, 5, 9, 10, 60, 109, 500)
    private = [learning_rate_at(optimizer, step) for step in steps]
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    assert internals.learning_rate_schedule(inner) is inner._learning_rate
    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    assert (
        internals.learning_rate_schedule(inner) is not inner._learning_rate
    )  # rebuilt from its config
    assert [learning_rate_at(optimizer, step) for step in steps] == pytest.approx(private, rel=1e-6)
    if name in ("constant", "cosine"):
        assert len(set(private)) >= 4  # warm-up (and decay) steps differ


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_unet(UNET, kernel_initializer="zeros"),
        lambda: DiffusionModel(get_preset("tiny"), kernel_initializer="zeros"),
    ],
    ids=["unet", "diffusion_model"],
)
def test_flatten_layers_fallback_finds_the_same_layers(build, untested_releases):
    model = build()
    private = model._flatten_layers(include_self=False)
    public = internals.flatten_layers(model)
    assert len(public) == len(private) > 10
    assert {id(layer) for layer in public} == {id(layer) for layer in private}


def test_flops_layer_walk_fallback_gives_the_same_count(monkeypatch):
    network = build_unet(UNET, kernel_initializer="zeros")  # counts need no random draws
    private = unet_forward_flops(network)
    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    assert unet_forward_flops(network) == private > 0


def test_adam_internals_pair_each_variable_with_its_moments(monkeypatch):
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in ((3, 2), (4,))]
    optimizer = keras.optimizers.Adam()
    optimizer.build(variables)
    adam = internals.adam_internals(optimizer, variables)
    assert [m.shape for m in adam.momentums] == [v.shape for v in adam.velocities] == [(3, 2), (4,)]
    assert all("momentum" in m.path for m in adam.momentums)
    assert all("velocity" in v.path for v in adam.velocities)
    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    assert internals.adam_internals(optimizer, variables) is None  # the caller: `optimizer.apply`


@pytest.mark.skipif(backend.backend_name() != "tensorflow", reason="tf.distribute strategies")
def test_distribute_strategy_fallback_equals_the_private_path(monkeypatch):
    import tensorflow as tf

    def build():
        inputs = keras.Input((3,))
        return keras.Model(inputs, keras.layers.Dense(2)(inputs))

    plain = build()
    strategy = tf.distribute.MirroredStrategy(["/CPU:0"])
    with strategy.scope():
        mirrored = build()
    private = [internals.distribute_strategy(model) for model in (plain, mirrored)]
    assert private == [None, strategy]
    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    assert [internals.distribute_strategy(model) for model in (plain, mirrored)] == private
    with strategy.scope():
        assert internals.distribute_strategy(mirrored) is strategy


def train(images):
    keras.utils.set_random_seed(0)
    model = randomize_weights(DiffusionModel.from_preset("tiny", seed=0), seed=1)
    config = dataclasses.replace(model.config.train, grad_clip=0.05, warmup_steps=0)
    model.compile(optimizer=make_optimizer(config), run_eagerly=True)
    model.fit(images, batch_size=8, epochs=1, shuffle=False, verbose=0)
    weights = [ops.convert_to_numpy(w) for w in model.network.weights + model.ema_network.weights]
    return model, weights


def sample(model):
    return model.generate(2, steps=3, seed=5, return_uint8=False)


@pytest.mark.skipif(
    not ON_TORCH,
    reason="the fused Adam step, multi-tensor kernels and cached kernels are PyTorch's",
)
def test_torch_training_through_the_public_fallback_equals_the_fused_path(tiny_images, monkeypatch):
    # Four steps with clipping active: the same weights and EMA weights through the plain path as
    # through the fused one; then sampling without the kernel cache (the tensors' versions are
    # private) gives the cached path's samples.
    fused, fused_weights = train(tiny_images)
    assert fused._torch_step_plan.adam.fused and int(fused.optimizer.iterations) == 4
    cached = sample(fused)
    import torch

    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    np.testing.assert_allclose(sample(fused), cached, rtol=0, atol=1e-6)
    plain, plain_weights = train(tiny_images)
    assert not plain._torch_step_plan.adam.fused and int(plain.optimizer.iterations) == 4
    for ours, theirs in zip(plain_weights, fused_weights):
        # Adam's m / sqrt(v) rounds differently in the two kernels: within 1% of one step (lr 1e-3).
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    start = randomize_weights(DiffusionModel.from_preset("tiny", seed=0), seed=1)
    moved = max(
        np.abs(ops.convert_to_numpy(a) - b).max()
        for a, b in zip(start.network.weights, plain_weights)
    )
    assert moved > 1e-4  # the steps changed the weights


def test_functional_run_falls_back_where_keras_is_untested(untested_releases):
    # An untested Keras: no private graph walk (the caller calls the model) and the training
    # argument found from `call`'s signature.
    network = build_unet(UNET)
    assert internals.run_functional(network, [], lambda *args: None) is None
    assert internals.autocast_scope_open()
    blocks = [layer for layer in network.layers if "block" in layer.name]
    assert blocks and all(internals.call_accepts_training(layer) for layer in blocks)
    assert not internals.call_accepts_training(network.get_layer("conv_in"))
