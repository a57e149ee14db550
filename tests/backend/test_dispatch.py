"""`keras_ddpm.backend`: each call goes to the active backend's module, or to the backend-neutral
behaviour where that module has none."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_ddpm import backend
from keras_ddpm import training

NAME = keras.backend.backend()


def test_the_active_backend_module_is_the_one_dispatched_to():
    assert backend.backend_name() == NAME
    module = backend._framework()
    assert module.__name__ == f"keras_ddpm.backend.{NAME}"
    assert callable(module.train_step) and callable(module.compile_inference)


def test_jax_runs_xla_cpu_without_ynnpack(monkeypatch):
    # YNNPACK fusions slow this CPU down (docs/performance.md); a user's own choice in XLA_FLAGS
    # wins.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    backend.configure_xla_cpu()
    expected = "--xla_cpu_enable_fast_math=false"
    if NAME == "jax":
        expected += " --xla_cpu_experimental_ynn_fusion_type="
    assert os.environ["XLA_FLAGS"] == expected
    own = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    monkeypatch.setenv("XLA_FLAGS", own)
    backend.configure_xla_cpu()
    assert os.environ["XLA_FLAGS"] == own


def test_each_backend_says_what_it_supports():
    assert backend.supports_steps_per_execution() == (NAME != "torch")
    assert backend.default_jit_compile() == (
        False if NAME == "tensorflow" else "auto"
    )  # no GPU here
    assert backend.prefetch_device() is None  # no GPU here
    assert backend.replica_context() == (0, 1)
    assert backend.compute_dtype_problem("float32") is None


@pytest.mark.parametrize("distribute", ["none", "mirrored", "data_parallel"])
def test_a_strategy_runs_on_its_own_backend_only(distribute):
    needed = backend.DISTRIBUTIONS[distribute]
    if needed in (None, NAME):
        assert backend.num_replicas(distribute) >= 1
        return
    message = (
        rf"^--distribute {distribute} needs the {needed} backend \(KERAS_BACKEND={needed}\)\.$"
    )
    for call in (training.num_replicas, training.distribution_scope):
        with pytest.raises(ValueError, match=message):
            call(distribute)


def test_an_unknown_strategy_is_named():
    with pytest.raises(ValueError, match=r"distribute must be one of .*Received: 'ring'"):
        training.distribution_scope("ring")
    assert training.DISTRIBUTIONS == ("none", "mirrored", "data_parallel", "multi_worker")
    with training.distribution_scope("none"):
        assert training.num_replicas("none") == 1


def test_layer_kernels_are_the_backends_own_or_none():
    # PyTorch has its own NHWC kernels (tests/backend/test_torch.py checks their numbers); the
    # other backends answer None, and the layers run Keras' own call.
    x = ops.convert_to_tensor(
        np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype("float32")
    )
    kernel, bias = (
        keras.Variable(np.ones((3, 3, 3, 5), "float32")),
        keras.Variable(np.zeros(5, "float32")),
    )
    gamma, beta = keras.Variable(np.ones(3, "float32")), keras.Variable(np.zeros(3, "float32"))
    dense_kernel = keras.Variable(np.ones((3, 5), "float32"))
    initializer = keras.initializers.Ones()
    results = {
        "conv": backend.conv2d_nhwc(x, kernel, (1, 1), (1, 1, 1, 1), bias),
        "dense": backend.dense(x, dense_kernel, bias),
        "group_norm": backend.group_norm_nhwc(x, 3, gamma, beta, 1e-6),
        "upsample": backend.upsample_nearest_nhwc(x, 2),
        "attention": backend.attention_nhwc(x, x, x),
    }
    if NAME != "torch":
        assert results == dict.fromkeys(results)
        assert backend.conv_kernel_initializer(initializer) is initializer
        return
    assert tuple(results["conv"][0].shape) == (2, 4, 4, 5)
    assert tuple(results["dense"].shape) == (2, 4, 4, 5)
    assert tuple(results["group_norm"].shape) == (2, 4, 4, 3)
    assert tuple(results["upsample"].shape) == (2, 8, 8, 3)
    flat = ops.reshape(x, (2, 16, 1, 3))  # Keras' layout: (N, positions, heads, C)
    expected = ops.reshape(ops.dot_product_attention(flat, flat, flat), (2, 4, 4, 3))
    np.testing.assert_allclose(results["attention"], expected, rtol=0, atol=1e-6)
    stored = backend.conv_kernel_initializer(initializer)((3, 3, 3, 5))
    assert tuple(stored.shape) == (3, 3, 3, 5) and not stored.is_contiguous()
