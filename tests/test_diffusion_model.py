import keras
import numpy as np
import pytest
from conftest import compile_for_numbers
from conftest import randomize_weights
from keras import ops

from keras_ddpm import DiffusionModel
from keras_ddpm import samplers
from keras_ddpm.schedules import min_snr_weights


class WeightRecorder(keras.callbacks.Callback):
    """Copies the trained and EMA weights at the end of every epoch."""

    def __init__(self):
        super().__init__()
        self.records = []

    def on_epoch_end(self, epoch, logs=None):
        self.records.append(
            (
                [np.array(ops.convert_to_numpy(w)) for w in self.model.network.weights],
                [np.array(ops.convert_to_numpy(w)) for w in self.model.ema_network.weights],
            )
        )


def test_fit_gives_finite_loss_and_follows_the_ema_formula(tiny_images):
    model = DiffusionModel.from_preset("tiny", seed=0)
    decay = model.config.train.ema_decay
    initial = [np.array(ops.convert_to_numpy(w)) for w in model.network.weights]
    model.compile()
    recorder = WeightRecorder()
    # Three epochs of one step each: the EMA is checked after every optimizer step.
    history = model.fit(tiny_images[:16], batch_size=16, epochs=3, verbose=0, callbacks=[recorder])
    losses = history.history["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert 0.2 < losses[0] < 3.0  # eps-prediction starts near E||eps||^2 = 1
    assert int(model.optimizer.iterations) == 3
    ema = initial
    for weights, ema_weights in recorder.records:
        ema = [decay * e + (1 - decay) * w for e, w in zip(ema, weights)]
        for expected, actual in zip(ema, ema_weights):
            np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7)
    # The trained weights moved, and the EMA lags behind them.
    final_weights, final_ema = recorder.records[-1]
    moved = max(np.abs(w - w0).max() for w, w0 in zip(final_weights, initial))
    assert moved > 0
    assert all(
        np.abs(e - w0).max() <= np.abs(w - w0).max() + 1e-7
        for e, w, w0 in zip(final_ema, final_weights, initial)
    )


def test_x0_loss_of_a_fresh_network_is_the_mean_square_of_the_images(tiny_images):
    # A fresh network outputs exactly zero, so L = E[(0 - x_0)^2].
    # 4 images: the batch of the next tests' eager calls, whose operations JAX then has compiled.
    model = DiffusionModel.from_preset("tiny", prediction="x0", seed=0)
    images = tiny_images[:4]
    loss = ops.convert_to_numpy(model.compute_diffusion_loss(images, training=False))
    assert loss == pytest.approx(np.mean(images**2), rel=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_min_snr_loss_weights_each_example_by_its_timestep(prediction, tiny_images):
    # The weighted loss is the mean over examples of w(t_i) * mean_pixels((f - target)^2), with
    # the target in closed form (eps, or v = sqrt(a) eps - sqrt(1 - a) x_0) from the same draws;
    # gamma = 0 is the plain mean.
    model = randomize_weights(
        DiffusionModel.from_preset("tiny", prediction=prediction, snr_gamma=5.0, seed=0)
    )
    images = tiny_images[:4]
    t = np.array([0, 10, 50, 99], "int32")
    noise = np.random.default_rng(2).normal(size=(4, 16, 16, 1)).astype("float32")
    a = model.schedule.alphas_cumprod[t][:, None, None, None]
    x_t = np.sqrt(a) * images + np.sqrt(1 - a) * noise
    output = ops.convert_to_numpy(model.network([x_t.astype("float32"), t]))
    target = noise if prediction == "epsilon" else np.sqrt(a) * noise - np.sqrt(1 - a) * images
    errors = np.mean((output - target) ** 2, axis=(1, 2, 3))
    weights = min_snr_weights(model.schedule.alphas_cumprod, 5.0, prediction)[t]
    assert weights.min() < 0.99  # the tiny preset's SNR exceeds 5 at the early steps
    draws = [ops.convert_to_tensor(x) for x in (images, t, noise)]
    loss = float(ops.convert_to_numpy(model.diffusion_loss(*draws)))
    assert loss == pytest.approx(np.mean(weights * errors), rel=1e-4)
    plain = DiffusionModel.from_preset("tiny", prediction=prediction, seed=0)
    for weight, value in zip(plain.network.weights, model.network.weights):
        weight.assign(value)
    unweighted = float(ops.convert_to_numpy(plain.diffusion_loss(*draws)))
    assert unweighted == pytest.approx(np.mean(errors), rel=1e-4)
    assert abs(loss - unweighted) > 1e-3 * unweighted


@pytest.mark.parametrize("prediction, num_classes", [("x0", 0), ("v", 4)])
def test_other_targets_and_class_conditional_models_train(prediction, num_classes, tiny_images):
    model = DiffusionModel.from_preset(
        "tiny", prediction=prediction, schedule="cosine", num_classes=num_classes, seed=0
    )
    compile_for_numbers(model)  # the compiled step is the first test's
    labels = np.arange(len(tiny_images)) % 4 if num_classes else None
    history = model.fit(tiny_images, labels, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_q_sample_is_equation_4():
    model = DiffusionModel.from_preset("tiny")
    rng = np.random.default_rng(1)
    x0, noise = rng.uniform(-1, 1, (3, 16, 16, 1)), rng.standard_normal((3, 16, 16, 1))
    t = np.array([0, 50, 99])
    x_t = ops.convert_to_numpy(model.q_sample(x0.astype("float32"), t, noise.astype("float32")))
    a = model.schedule.alphas_cumprod[t][:, None, None, None]
    np.testing.assert_allclose(x_t, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, atol=1e-5)


@pytest.fixture(scope="module")
def random_model():
    return randomize_weights(DiffusionModel.from_preset("tiny", seed=0))


def test_generate_returns_uint8_and_is_seeded(random_model):
    a = random_model.generate(3, steps=5, seed=7)
    assert a.shape == (3, 16, 16, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, random_model.generate(3, steps=5, seed=7))
    assert not np.array_equal(a, random_model.generate(3, steps=5, seed=8))
    stochastic = random_model.generate(3, sampler="ddpm", steps=5, seed=7)
    np.testing.assert_array_equal(
        stochastic, random_model.generate(3, sampler="ddpm", steps=5, seed=7)
    )


def test_neighbouring_seeds_draw_independent_noise():
    """`eval` and multi-batch `sample` give batch i the seed seed + i. A fresh network outputs 0,
    so each sample is a fixed linear map of the noise its seed drew: the samples of seeds 0..3
    must be uncorrelated (PyTorch once replayed seed s's stream shifted by one draw for s + 1:
    correlation 0.3 here, 1.0 with DDPM-1000), and a seed must still repeat itself (issue 18)."""
    model = DiffusionModel.from_preset("tiny", seed=0)
    for sampler in ("ddpm", "ddim"):  # stochastic, and deterministic (eta = 0: only x_T is drawn)
        kwargs = dict(sampler=sampler, steps=5, return_uint8=False, clip_denoised=False)
        samples = [model.generate(8, seed=seed, **kwargs).ravel() for seed in range(4)]
        correlations = np.corrcoef(samples)[np.triu_indices(4, k=1)]
        assert np.abs(correlations).max() < 0.1, (sampler, correlations)
    np.testing.assert_array_equal(samples[2], model.generate(8, seed=2, **kwargs).ravel())


def test_ddim_eta0_is_deterministic_from_x_T(random_model):
    x_T = np.random.default_rng(3).standard_normal((2, 16, 16, 1)).astype("float32")
    a = random_model.generate(noise=x_T, steps=6, seed=1, return_uint8=False)
    b = random_model.generate(noise=x_T, steps=6, seed=2, return_uint8=False)
    np.testing.assert_array_equal(a, b)
    c = random_model.generate(noise=x_T, steps=6, eta=1.0, seed=1, return_uint8=False)
    d = random_model.generate(noise=x_T, steps=6, eta=1.0, seed=2, return_uint8=False)
    assert np.abs(c - d).max() > 1e-3  # eta > 0 draws fresh noise per step


def test_generate_runs_the_ddim_chain_exactly(random_model):
    """The sampling loop against an independent numpy loop over DDIM eq. 12."""
    x_T = np.random.default_rng(4).standard_normal((2, 16, 16, 1)).astype("float32")
    steps = 4
    got = random_model.generate(noise=x_T, steps=steps, clip_denoised=False, return_uint8=False)
    a = random_model.schedule.alphas_cumprod
    timesteps = samplers.ddim_timesteps(100, steps)
    np.testing.assert_array_equal(timesteps, [75, 50, 25, 0])  # DDIM's range(0, T, T // S)
    x = x_T.astype(np.float64)
    for i, t in enumerate(timesteps):
        eps = ops.convert_to_numpy(
            random_model.ema_network([x.astype("float32"), np.full(2, t, "int32")])
        )
        a_prev = a[timesteps[i + 1]] if i + 1 < steps else 1.0
        x0 = (x - np.sqrt(1 - a[t]) * eps) / np.sqrt(a[t])
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    np.testing.assert_allclose(got, x, rtol=1e-3, atol=1e-3)


def test_generate_uses_ema_weights(random_model):
    model = randomize_weights(DiffusionModel.from_preset("tiny", seed=0))
    model.ema_network.get_layer("conv_out").kernel.assign(np.zeros((3, 3, 16, 1), "float32"))
    x_T = np.random.default_rng(5).standard_normal((1, 16, 16, 1)).astype("float32")
    ema = model.generate(noise=x_T, steps=3, return_uint8=False)
    trained = model.generate(noise=x_T, steps=3, use_ema=False, return_uint8=False)
    assert np.abs(ema - trained).max() > 1e-3


def test_class_conditional_generation_and_guidance():
    model = randomize_weights(DiffusionModel.from_preset("tiny", num_classes=3, seed=0))
    x_T = np.random.default_rng(6).standard_normal((3, 16, 16, 1)).astype("float32")
    plain = model.generate(noise=x_T, steps=3, class_labels=[0, 1, 2], return_uint8=False)
    guided = model.generate(
        noise=x_T, steps=3, class_labels=[0, 1, 2], guidance=2.0, return_uint8=False
    )
    assert plain.shape == guided.shape == (3, 16, 16, 1)
    assert np.abs(plain - guided).max() > 1e-4
    # One label for all images is broadcast; no label means the null (unconditional) label.
    np.testing.assert_array_equal(
        model.generate(noise=x_T, steps=3, class_labels=1),
        model.generate(noise=x_T, steps=3, class_labels=[1, 1, 1]),
    )
    null = model.generate(noise=x_T, steps=3, return_uint8=False)
    assert null.shape == plain.shape and np.abs(null - plain).max() > 1e-4
    with pytest.raises(ValueError, match="Class labels"):
        model.generate(2, class_labels=[0, 3])
    with pytest.raises(ValueError, match="Expected one class label"):
        model.generate(2, class_labels=[0, 1, 2])


def test_bad_generate_arguments(random_model):
    with pytest.raises(ValueError, match="unconditional"):
        random_model.generate(2, class_labels=[0, 1])
    with pytest.raises(ValueError, match="noise must have shape"):
        random_model.generate(noise=np.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="num_images"):
        random_model.generate()
    with pytest.raises(ValueError, match="steps"):
        random_model.generate(1, steps=101)
