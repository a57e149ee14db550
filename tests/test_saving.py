import json

import keras
import numpy as np
import pytest
from conftest import BACKENDS
from conftest import compile_for_numbers
from conftest import randomize_weights
from conftest import run_python
from keras import ops

from keras_ddpm import DiffusionModel
from keras_ddpm import load_model


def weights_of(network):
    return [np.array(ops.convert_to_numpy(w)) for w in network.weights]


def test_keras_round_trip_keeps_everything(tmp_path, tiny_images):
    model = DiffusionModel.from_preset(
        "tiny", num_classes=2, prediction="v", schedule="cosine", seed=3
    )
    compile_for_numbers(model)
    model.fit(tiny_images[:16], np.zeros(16, "int32"), batch_size=16, epochs=1, verbose=0)
    randomize_weights(model, seed=1)
    model.ema_network.get_layer("conv_out").kernel.assign(np.ones((3, 3, 16, 1), "float32") * 0.01)
    path = str(tmp_path / "model.keras")
    model.save(path)

    loaded = load_model(path)
    assert isinstance(loaded, DiffusionModel)
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.schedule.betas, model.schedule.betas)
    for a, b in zip(weights_of(loaded.network), weights_of(model.network)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(weights_of(loaded.ema_network), weights_of(model.ema_network)):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.optimizer.iterations) == 1
    # one step compiled, not a loop
    sampling = dict(steps=3, seed=5, class_labels=1, compile_loop=False)
    np.testing.assert_array_equal(loaded.generate(2, **sampling), model.generate(2, **sampling))
    # Training goes on from the loaded state.
    loaded.run_eagerly = model.run_eagerly
    loaded.fit(tiny_images[:16], np.ones(16, "int32"), batch_size=16, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 2


@pytest.mark.once
def test_only_load_model_skips_the_random_initialisation(tmp_path, monkeypatch):
    # Every weight of a loaded model comes from its file, so `load_model` builds the networks
    # without drawing random kernels (on JAX a compiled program a kernel shape); `from_config`
    # elsewhere (keras.models.clone_model, say) still draws them.
    model = DiffusionModel.from_preset("tiny", seed=0)
    path = str(tmp_path / "model.keras")
    model.save(path)

    def no_draws(*args, **kwargs):
        raise AssertionError("a random kernel was drawn")

    monkeypatch.setattr(keras.initializers.GlorotUniform, "__call__", no_draws)
    loaded = load_model(path)
    for a, b in zip(weights_of(loaded.ema_network), weights_of(model.ema_network)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AssertionError, match="a random kernel was drawn"):
        DiffusionModel.from_config(model.get_config())


CHECK = """
import json, numpy as np
import keras_ddpm
data = np.load({inputs!r})
model = keras_ddpm.load_model({path!r})
inputs = [data["x"], data["t"], data["y"]]
# One compiled forward pass each (JAX would compile every operation of an eager call on its own).
eps, ema_eps = (network.predict_on_batch(inputs) for network in (model.network, model.ema_network))
print(json.dumps({{
    "network": float(np.abs(eps - data["eps"]).max()),
    "ema": float(np.abs(ema_eps - data["ema_eps"]).max()),
    "scale": float(np.abs(data["eps"]).max()),
}}))
"""


@pytest.mark.once(lane="tensorflow")  # saved on the lane's backend, loaded on the other two
@pytest.mark.slow
def test_a_model_saved_on_one_backend_loads_on_the_others(tmp_path):
    model = randomize_weights(DiffusionModel.from_preset("tiny", num_classes=3, seed=0), seed=2)
    for weight in model.ema_network.weights:  # make the EMA differ from the trained weights
        weight.assign(ops.convert_to_numpy(weight) * 0.9)
    rng = np.random.default_rng(0)
    inputs = [
        rng.standard_normal((4, 16, 16, 1)).astype("float32"),
        np.array([0, 10, 50, 99], "int32"),
        np.array([0, 1, 2, 3], "int32"),
    ]
    path = str(tmp_path / "model.keras")
    model.save(path)
    np.savez(
        tmp_path / "inputs.npz",
        x=inputs[0],
        t=inputs[1],
        y=inputs[2],
        eps=ops.convert_to_numpy(model.network(inputs)),
        ema_eps=ops.convert_to_numpy(model.ema_network(inputs)),
    )
    for backend in BACKENDS:
        if backend == keras.backend.backend():
            continue
        result = json.loads(
            run_python(CHECK.format(path=path, inputs=str(tmp_path / "inputs.npz")), backend)
            .strip()
            .splitlines()[-1]
        )
        assert result["scale"] > 0.01, "outputs must not be trivially zero"
        assert result["network"] < 1e-4, (backend, result)
        assert result["ema"] < 1e-4, (backend, result)


def test_a_checkpoint_resumes_training_on_any_backend(tiny_images):
    # Under PyTorch Keras records its torch-only Adam subclass; loading that on TensorFlow or JAX
    # used to fail on the first step. The saved config names the public class instead, and one
    # written by an earlier version is mended on load.
    model = DiffusionModel.from_preset("tiny", seed=0)
    model.compile()
    saved = model.get_compile_config()["optimizer"]
    assert saved["module"] == "keras.optimizers"
    assert saved["config"]["global_clipnorm"] == model.config.train.grad_clip

    resumed = DiffusionModel.from_preset("tiny", seed=0)
    resumed.compile_from_config(
        {"optimizer": dict(saved, module="keras.src.backend.torch.optimizers.torch_adam")}
    )
    assert type(resumed.optimizer) is type(keras.optimizers.Adam())  # this backend's Adam
    resumed.run_eagerly = keras.backend.backend() != "jax"  # as `compile_for_numbers`
    history = resumed.fit(tiny_images[:16], batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(resumed.optimizer.iterations) == 1
