"""keras_ddpm.data.arrays: the embedded digits without TensorFlow, as the tf.data pipeline's."""

import keras
import numpy as np
import pytest
from data_testing import batches

from keras_ddpm import data
from keras_ddpm.data import pipeline

pytest.importorskip("tensorflow_datasets")
tf = data.import_tensorflow()


def test_without_tensorflow_the_embedded_digits_come_as_the_same_numpy_batches(monkeypatch):
    # A JAX/PyTorch machine without TensorFlow (the lent GPU box) trains on mnist_5k this way.
    stream = dict(shuffle=False, repeat=False)
    expected = batches(data.make_dataset("mnist_5k:test", 32, 1, 100, with_labels=True, **stream))
    rgb_expected = batches(data.make_dataset("mnist_5k:test", 16, 3, 100, **stream))
    monkeypatch.setattr(pipeline, "tensorflow_installed", lambda: False)
    found = data.make_dataset("mnist_5k:test", 32, 1, 100, with_labels=True, **stream)
    assert isinstance(found, keras.utils.PyDataset) and found.num_batches == 5
    images = np.concatenate([found[i][0] for i in range(5)])
    labels = np.concatenate([found[i][1] for i in range(5)])
    np.testing.assert_array_equal(images, np.concatenate([b[0] for b in expected]))
    np.testing.assert_array_equal(labels, np.concatenate([b[1] for b in expected]))
    rgb = np.concatenate([b for b in data.make_dataset("mnist_5k:test", 16, 3, 100, **stream)])
    assert rgb.shape == (500, 16, 16, 3)
    # PIL's vs TF's antialiased resize
    assert np.abs(rgb - np.concatenate(rgb_expected)).max() <= 2 / 127.5
    # Training: infinite, reshuffled every pass, seeded, flips are mirror images.
    train = data.make_dataset("mnist_5k:test", 32, 1, 100, seed=1, horizontal_flip=True)
    assert train.num_batches is None and train[0].shape == (100, 32, 32, 1)
    first_pass = np.concatenate([train[i] for i in range(5)])
    second_pass = np.concatenate([train[i] for i in range(5, 10)])
    assert not np.array_equal(first_pass, second_pass)
    again = data.make_dataset("mnist_5k:test", 32, 1, 100, seed=1, horizontal_flip=True)
    np.testing.assert_array_equal(train[7], again[7])
    plain = np.concatenate([b[0] for b in expected])

    def flip_invariant(x):  # one pass is a permutation of the images, each maybe mirrored
        return np.sort(np.minimum(x, x[:, :, ::-1]).reshape(len(x), -1).sum(axis=1))

    np.testing.assert_allclose(flip_invariant(first_pass), flip_invariant(plain), atol=1e-3)
    unflipped_batches = data.make_dataset("mnist_5k:test", 32, 1, 100, seed=1)
    unflipped = np.concatenate([unflipped_batches[i] for i in range(5)])
    mirrored = np.all(first_pass == unflipped[:, :, ::-1], axis=(1, 2, 3))
    mirrored &= ~np.all(first_pass == unflipped, axis=(1, 2, 3))
    assert 0.35 < mirrored.mean() < 0.65
