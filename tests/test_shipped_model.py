"""The model that ships in saved_models/: it loads and samples on every backend."""

import os

import numpy as np
import pytest

from keras_ddpm import load_model

SAVED_MODELS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "saved_models"
)
MNIST = os.path.join(SAVED_MODELS, "mnist.keras")


@pytest.fixture(scope="module")
def model():
    return load_model(MNIST)


def test_it_is_the_class_conditional_mnist_preset_with_its_record(model):
    assert model.config.name == "mnist" and model.num_classes == 10
    assert model.config.diffusion.class_dropout > 0  # trained for classifier-free guidance
    assert model.image_shape == (32, 32, 1)
    assert getattr(model, "optimizer", None) is None  # weights only: it ships small
    assert model.trained_steps == 20_000 and model.config.train.train_steps == 4000  # the plan
    assert os.path.getsize(MNIST) < 20 * 2**20
    record = open(os.path.join(SAVED_MODELS, "mnist.txt")).read()
    assert "python cli.py train" in record and "mnist_5k" in record


def test_it_draws_digits_quickly_and_reproducibly(model):
    images = model.generate(
        8, sampler="ddim", steps=10, seed=0, class_labels=np.arange(8), guidance=2.0
    )
    assert images.shape == (8, 32, 32, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(
        images,
        model.generate(
            8, sampler="ddim", steps=10, seed=0, class_labels=np.arange(8), guidance=2.0
        ),
    )
    # The training digits are white strokes on black, padded from 28x28 by 2 black pixels a side:
    # a trained model keeps the border black and draws some bright strokes; random weights do not.
    border = np.concatenate(
        [
            images[:, :2].ravel(),
            images[:, -2:].ravel(),
            images[:, :, :2].ravel(),
            images[:, :, -2:].ravel(),
        ]
    )
    assert border.mean() < 40  # uniform noise would average about 127
    bright = (images > 128).mean(axis=(1, 2, 3))
    assert np.all((bright > 0.03) & (bright < 0.4))
