"""FID and KID: closed forms, streaming statistics, preprocessing, Keras' ImageNet InceptionV3
extractor ("keras-imagenet"), the cache. The FID Inception network: tests/test_inception.py."""

import hashlib
import json
import os

import numpy as np
import pytest
from fid_testing import tiny_extractor
from fid_testing import write_images
from PIL import Image

from keras_ddpm import fid


def random_covariance(rng, d, floor=0.1):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + floor * np.eye(d)


def symmetric_sqrt(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def closed_form_fid(m1, s1, m2, s2):
    """||m1 - m2||^2 + Tr(S1 + S2 - 2 (S1^(1/2) S2 S1^(1/2))^(1/2)), independently of fid.py."""
    root = symmetric_sqrt(s1)
    return (
        np.sum((m1 - m2) ** 2)
        + np.trace(s1)
        + np.trace(s2)
        - 2 * np.trace(symmetric_sqrt(root @ s2 @ root))
    )


# Frechet distance.


@pytest.mark.once
def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # 1 + 6.25 + 4 + 1 = 12.25
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert expected == pytest.approx(12.25)
    assert fid.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(12.25, abs=1e-10)
    # 1-d: (m1-m2)^2 + (s1-s2)^2
    assert fid.frechet_distance([3.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(4.0 + 1.0)


@pytest.mark.once
def test_frechet_distance_of_full_gaussians_is_the_closed_form_and_symmetric():
    rng = np.random.default_rng(1)
    m1, m2 = rng.standard_normal(12), rng.standard_normal(12)
    s1, s2 = random_covariance(rng, 12), random_covariance(rng, 12)
    expected = closed_form_fid(m1, s1, m2, s2)
    assert fid.frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(m2, s2, m1, s1) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.once
def test_fid_of_sampled_gaussians_streamed_in_batches_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    d = 4
    m1, m2 = np.zeros(d), np.array([1.0, 0.0, -0.5, 0.0])
    s1, s2 = random_covariance(rng, d, 0.5), random_covariance(rng, d, 0.5)
    x = rng.multivariate_normal(m1, s1, 40_000)
    y = rng.multivariate_normal(m2, s2, 40_000)
    a, b = fid.FeatureStatistics(), fid.FeatureStatistics()
    for start in range(0, len(x), 999):
        a.update(x[start : start + 999])
        b.update(y[start : start + 999])
    expected = closed_form_fid(m1, s1, m2, s2)
    assert expected > 1.0
    assert fid.frechet_distance(a.mean, a.covariance, b.mean, b.covariance) == pytest.approx(
        expected, rel=0.03
    )


@pytest.mark.once
def test_fid_from_features_is_exact_for_singular_covariances():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((10, 64)), rng.standard_normal((12, 64)) * 1.5 + 0.2  # rank < d
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    expected = closed_form_fid(x.mean(0), cx, y.mean(0), cy)
    # (The eigenvalue form takes square roots of ~1e-15 round-off in the null space: rel 1e-6.)
    assert fid.frechet_distance_from_features(x, y) == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance_from_features(y, x) == pytest.approx(
        fid.frechet_distance_from_features(x, y), rel=1e-12
    )
    assert fid.frechet_distance_from_features(x, x) == pytest.approx(0.0, abs=1e-9)
    # scipy's sqrtm path (eps retry, real part or fallback) lands on the same value.
    assert fid.frechet_distance(x.mean(0), cx, y.mean(0), cy) == pytest.approx(expected, rel=1e-4)
    # With more images than dimensions both paths are exact.
    x, y = rng.standard_normal((300, 16)), rng.standard_normal((200, 16)) + 0.3
    sqrtm_value = fid.frechet_distance(
        x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    )
    assert fid.frechet_distance_from_features(x, y) == pytest.approx(sqrtm_value, rel=1e-9)


@pytest.mark.once
def test_mismatched_statistics_are_rejected():
    with pytest.raises(ValueError, match="do not match"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# Streaming statistics.


@pytest.mark.once
def test_streaming_mean_and_covariance_match_numpy_even_with_large_means():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1000, 8)) * 0.01 + 1e4
    stats = fid.FeatureStatistics()
    for start in range(0, len(x), 64):
        stats.update(x[start : start + 64])
    assert stats.num_images == 1000
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-6, atol=1e-12)


@pytest.mark.once
def test_kid_features_are_a_bounded_uniform_reservoir():
    rows = np.arange(2000, dtype=np.float64)[:, None].repeat(2, axis=1)
    stats = fid.FeatureStatistics(max_kid_features=200, seed=0)
    for start in range(0, 2000, 100):
        stats.update(rows[start : start + 100])
    kept = stats.features[:, 0]
    assert stats.features.shape == (200, 2) and len(np.unique(kept)) == 200
    assert abs(kept.mean() - 999.5) < 120  # uniform over all 2000 rows (sd of the mean ~ 40)
    assert (kept >= 1000).sum() > 70  # late rows are not starved


# KID.


def brute_force_mmd(a, b, degree=3, coef0=1.0):
    d, m = a.shape[1], len(a)
    k = lambda u, v: (u @ v / d + coef0) ** degree  # noqa: E731
    same = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (
        m * (m - 1)
    )
    return same - 2 * sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / m**2


@pytest.mark.once
def test_kid_is_the_unbiased_mmd_estimate():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)) + 1
    kid, kid_std = fid.kernel_inception_distance(x, y, num_subsets=3, subset_size=6)
    # full sets: every subset is the same
    assert kid == pytest.approx(brute_force_mmd(x, y), rel=1e-10)
    assert kid_std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.once
def test_kid_with_a_linear_kernel_estimates_the_squared_mean_difference():
    rng = np.random.default_rng(6)
    mean_shift = np.array([0.5, -0.25, 0.0, 1.0])
    x, y = rng.standard_normal((4000, 4)), rng.standard_normal((4000, 4)) + mean_shift
    kid, _ = fid.kernel_inception_distance(
        x, y, num_subsets=20, subset_size=1000, degree=1, gamma=1.0, coef0=0.0
    )
    # E[x.x'] terms: ||mu_x - mu_y||^2 = 1.3125
    assert kid == pytest.approx(np.sum(mean_shift**2), rel=0.05)


@pytest.mark.once
def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((1000, 16)), rng.standard_normal((1000, 16))
    same, same_std = fid.kernel_inception_distance(x, y, num_subsets=20, subset_size=500)
    shifted, shifted_std = fid.kernel_inception_distance(
        x, y + 0.5, num_subsets=20, subset_size=500
    )
    assert abs(same) < 3 * same_std + 1e-3 and same_std > 0
    assert shifted > 10 * (abs(same) + same_std) and shifted > 5 * shifted_std
    with pytest.raises(ValueError, match="at least 2"):
        fid.kernel_inception_distance(x[:1], y)


# Preprocessing and the extractor.


def test_preprocessing_resizes_to_299_with_antialiasing_and_repeats_grayscale():
    extractor = fid.FeatureExtractor(model=None, name=None)
    gray = np.full((2, 16, 16, 1), 255, np.uint8)
    gray[1] = 0
    x = extractor.preprocess(gray)
    assert x.shape == (2, 299, 299, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], 1.0, atol=1e-5)  # Inception scaling: 255 -> 1, 0 -> -1
    np.testing.assert_allclose(x[1], -1.0, atol=1e-5)
    # A one-pixel checkerboard shrunk 2:1 averages to grey when antialiased (nearest would keep
    # +-1).
    checker = (
        ((np.indices((598, 598)).sum(0) % 2) * 255)
        .astype(np.uint8)[None, ..., None]
        .repeat(3, axis=-1)
    )
    shrunk = extractor.preprocess(checker)
    assert np.abs(shrunk[0, 2:-2, 2:-2]).max() < 0.05
    # Channels stay in place: a pure red image stays red.
    red = np.zeros((1, 8, 8, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(extractor.preprocess(red)[0, 100, 100], [1.0, -1.0, -1.0], atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        extractor.preprocess(np.zeros((1, 8, 8, 3), np.float32))


def test_extractor_pads_the_last_batch_and_returns_one_row_per_image():
    extractor = tiny_extractor(batch_size=4)
    images = np.random.default_rng(8).integers(0, 256, (6, 16, 16, 1), dtype=np.uint8)
    features = extractor(images)
    assert features.shape == (6, 8) and features.dtype == np.float32
    np.testing.assert_allclose(extractor(images[4:]), features[4:], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """The real InceptionV3 extractor with random weights, and those weights saved to a file."""
    extractor = fid.inception_v3(weights=None, batch_size=4)
    path = str(tmp_path_factory.mktemp("inception") / "inception_random.weights.h5")
    extractor.model.save_weights(path)
    return extractor, path


# Keras' own keras.applications network: once (the FID network is compared on every
# backend in tests/test_inception.py).
@pytest.mark.once
@pytest.mark.slow
def test_inception_v3_gives_2048_features_per_image(random_inception):
    extractor, _ = random_inception
    assert extractor.name is None  # random weights are never cached
    images = np.random.default_rng(9).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    features = extractor(images)  # 3 images in a batch of 4: padded, one row each
    assert (
        features.shape == (3, 2048) and features.dtype == np.float32 and np.isfinite(features).all()
    )
    assert (features >= 0).all() and features.std() > 0  # average pool of ReLU outputs
    np.testing.assert_array_equal(
        extractor.preprocess(np.repeat(images, 3, axis=-1)), extractor.preprocess(images)
    )


# Keras' own keras.applications network: once (the FID network is compared on every
# backend in tests/test_inception.py).
@pytest.mark.once
@pytest.mark.slow
def test_inception_v3_loads_local_weights_files(random_inception, tmp_path):
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    extractor, path = random_inception  # `.weights.h5` files are loaded in test_cli_eval...
    with open(path, "rb") as f:
        assert fid.weights_name(path) == "file-" + hashlib.sha256(f.read()).hexdigest()[:16]
    # ...and Keras' download is a legacy .h5 file (the notop format): it loads too.
    legacy = str(tmp_path / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, extractor.model)
    first, last = extractor.model.get_weights()[0], extractor.model.get_weights()[-1]
    loaded = fid.inception_v3(legacy)
    assert loaded.name == fid.weights_name(legacy) != fid.weights_name(path)
    reloaded = loaded.model.get_weights()
    np.testing.assert_array_equal(reloaded[0], first)
    np.testing.assert_array_equal(reloaded[-1], last)


@pytest.mark.slow
def test_missing_or_broken_weights_files_are_one_sentence(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5.*--inception-weights",
    ):
        fid.inception_v3(str(tmp_path / "missing.h5"))
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="Could not load Inception weights"):
        fid.inception_v3(str(broken))


# Reference statistics and their cache.


@pytest.mark.once
def test_reference_statistics_are_cached_by_key_and_loaded_without_pickles(tmp_path):
    extractor = tiny_extractor()
    stats, path = fid.reference_statistics(
        "mnist_5k:test", 16, 1, 20, extractor, batch_size=8, cache_dir=str(tmp_path)
    )
    assert stats.num_images == 20 and stats.features.shape == (20, 8)
    assert os.path.basename(path).startswith("mnist_5k-test-16px1c-n20-") and os.path.isfile(path)
    with np.load(path, allow_pickle=False) as f:  # plain arrays only
        assert all(f[name].dtype != object for name in f.files)
        key = json.loads(str(f["key"]))
    assert key == {
        "dataset": "mnist_5k",
        "split": "test",
        "crop": "auto",
        "image_size": 16,
        "image_channels": 1,
        "num_images": 20,
        "features": "custom",
        "resize": "clean",
        "weights": "tiny-test",
        "features_version": fid.FEATURES_VERSION,
    }

    class CacheOnly(fid.FeatureExtractor):
        def __call__(self, images):
            raise AssertionError("the cache should have been used")

    cached_extractor = CacheOnly(None, "tiny-test")
    cached, cached_path = fid.reference_statistics(
        "mnist_5k:test", 16, 1, 20, cached_extractor, cache_dir=str(tmp_path)
    )
    assert cached_path == path and cached.num_images == 20
    np.testing.assert_allclose(cached.mean, stats.mean)
    np.testing.assert_allclose(cached.covariance, stats.covariance, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(cached.features, stats.features)
    # Every part of the key changes the file.
    other = [
        fid.reference_key("mnist_5k:train", 16, 1, 20, extractor),
        fid.reference_key("mnist_5k:test", 32, 1, 20, extractor),
        fid.reference_key("mnist_5k:test", 16, 3, 20, extractor),
        fid.reference_key("mnist_5k:test", 16, 1, 40, extractor),
        fid.reference_key("mnist_5k:test", 16, 1, 20, tiny_extractor(name="other-weights")),
        fid.reference_key("mnist_5k:test", 16, 1, 20, extractor, crop="none"),
    ]
    assert len({fid.cache_path(k, str(tmp_path)) for k in other} | {path}) == len(other) + 1


@pytest.mark.once
def test_pickled_or_foreign_cache_files_are_recomputed(tmp_path):
    extractor, folder = tiny_extractor(), str(tmp_path / "real")
    write_images(folder, 10)
    _, path = fid.reference_statistics(
        folder, 16, 1, 10, extractor, batch_size=8, cache_dir=str(tmp_path / "cache")
    )
    # needs pickle to load
    np.savez(path, mean=np.array([{"evil": 1}], dtype=object), features=np.zeros((2, 8)))
    stats, same_path = fid.reference_statistics(
        folder, 16, 1, 10, extractor, batch_size=8, cache_dir=str(tmp_path / "cache")
    )
    assert same_path == path and stats.num_images == 10
    with np.load(path, allow_pickle=False) as f:
        assert f["mu"].dtype == np.float64  # overwritten with real statistics


@pytest.mark.once
def test_random_weights_are_not_cached(tmp_path):
    folder = str(tmp_path / "real")
    write_images(folder, 4)
    _, path = fid.reference_statistics(
        folder, 16, 1, 4, tiny_extractor(name=None), batch_size=8, cache_dir=str(tmp_path / "cache")
    )
    assert path is None and not os.path.exists(tmp_path / "cache")


@pytest.mark.once
def test_image_folders_stream_in_order_and_their_contents_key_the_cache(tmp_path):
    folder = str(tmp_path / "real")
    write_images(folder, 6)
    batches = list(fid.folder_batches(folder, batch_size=4))
    assert [b.shape for b in batches] == [(4, 16, 16, 1), (2, 16, 16, 1)] and batches[
        0
    ].dtype == np.uint8
    np.testing.assert_array_equal(
        batches[0][0, ..., 0], np.asarray(Image.open(os.path.join(folder, "000.png")))
    )
    extractor = tiny_extractor()
    stats, path = fid.reference_statistics(
        folder, 16, 1, None, extractor, batch_size=4, cache_dir=str(tmp_path / "cache")
    )
    assert stats.num_images == 6 and "-nall-" in path
    write_images(str(tmp_path / "real" / "more"), 1, seed=1)
    assert fid.reference_key(folder, 16, 1, None, extractor) != json.loads(
        str(np.load(path)["key"])
    )
    with pytest.raises(FileNotFoundError, match="No image folder"):
        fid.folder_batches(str(tmp_path / "missing"), 4).__next__()


@pytest.mark.once
def test_compare_reports_both_counts_and_uses_the_exact_path_for_few_images():
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((20, 32)), rng.standard_normal((30, 32)) + 0.1
    results = fid.compare(
        fid.FeatureStatistics().update(x), fid.FeatureStatistics().update(y), kid_subsets=5
    )
    assert results["num_generated"] == 20 and results["num_real"] == 30
    assert results["fid"] == pytest.approx(fid.frechet_distance_from_features(x, y), rel=1e-9)
    assert np.isfinite(results["kid"]) and results["kid_std"] >= 0


# `python cli.py eval`.


def run_cli(args):
    from click.testing import CliRunner

    from keras_ddpm.cli import cli

    return CliRunner().invoke(cli, args)


@pytest.mark.once
@pytest.mark.slow
def test_cli_eval_of_a_model_then_of_its_saved_images(random_inception, tmp_path):
    """--model with --gen-data-dir keeps the samples; --gen-data-dir alone reads them back."""
    from keras_ddpm import DiffusionModel

    _, weights = random_inception
    model_path = str(tmp_path / "model.keras")
    DiffusionModel.from_preset("tiny", seed=0).save(model_path)
    real_dir = str(tmp_path / "real")
    write_images(real_dir, 5)
    common = [
        "--real-data-dir",
        real_dir,
        "--n-eval-imgs",
        "3",
        "--batch-size",
        "4",
        "--features",
        "keras-imagenet",
        "--inception-weights",
        weights,
    ]
    common += ["--cache-dir", str(tmp_path / "cache"), "--kid-subsets", "3"]
    gen_dir = str(tmp_path / "generated")
    first = run_cli(
        [
            "eval",
            "--model",
            model_path,
            "--steps",
            "2",
            "--gen-data-dir",
            gen_dir,
            "--output",
            str(tmp_path / "a.json"),
            *common,
        ]
    )
    assert first.exit_code == 0, first.output
    assert "FID " in first.output
    assert "(keras-imagenet features, clean resize; 3 generated vs 3 real images)" in first.output
    assert "not equal to the papers' TF-Inception FIDs" in first.output
    assert sorted(os.listdir(gen_dir)) == [f"{i:06d}.png" for i in range(3)]
    a = json.load(open(tmp_path / "a.json"))
    assert a["num_generated"] == 3 and a["num_real"] == 3 and np.isfinite(a["fid"]) and a["fid"] > 0
    assert a["sampling"]["steps"] == 2 and a["inception_weights"] == fid.weights_name(weights)
    assert a["features"] == "keras-imagenet" and a["resize"] == "clean"
    assert os.path.isfile(a["reference_cache"]) and a["image_shape"] == [16, 16, 1]
    # The saved PNGs are lossless, and the reference now comes from the cache: the same numbers.
    second = run_cli(
        ["eval", "--gen-data-dir", gen_dir, "--output", str(tmp_path / "b.json"), *common]
    )
    assert second.exit_code == 0, second.output
    b = json.load(open(tmp_path / "b.json"))
    assert b["reference_cache"] == a["reference_cache"] and b["sampling"] is None
    assert b["fid"] == pytest.approx(a["fid"], rel=1e-6) and b["kid"] == pytest.approx(
        a["kid"], rel=1e-6, abs=1e-12
    )


@pytest.mark.once
def test_cli_eval_user_errors_are_one_line(tmp_path):
    cases = [
        (
            ["eval", "--gen-data-dir", str(tmp_path)],
            "exactly one of --dataset NAME, --real-data-dir DIR or --real-stats FILE",
        ),
        (["eval", "--dataset", "mnist_5k"], "Pass --model PATH"),
        (
            ["eval", "--gen-data-dir", str(tmp_path / "none"), "--dataset", "mnist_5k"],
            "No image folder",
        ),
        (
            ["eval", "--gen-data-dir", str(tmp_path), "--real-data-dir", str(tmp_path / "none")],
            "No image folder",
        ),
        (
            [
                "eval",
                "--gen-data-dir",
                str(tmp_path),
                "--dataset",
                "x",
                "--inception-weights",
                str(tmp_path / "w.h5"),
            ],
            "--inception-weights",
        ),
    ]
    for args, message in cases:
        result = run_cli(args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert (
            result.output.startswith("Error: ")
            and result.output.count("\n") == 1
            and "Traceback" not in result.output
        )


@pytest.mark.once
@pytest.mark.slow
def test_cli_eval_offline_without_weights_says_where_to_get_them(tmp_path, monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com: no internet")

    monkeypatch.setattr(file_utils, "get_file", offline)
    write_images(str(tmp_path / "gen"), 2)
    result = run_cli(
        [
            "eval",
            "--gen-data-dir",
            str(tmp_path / "gen"),
            "--dataset",
            "mnist_5k:test",
            "--features",
            "keras-imagenet",
        ]
    )
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: Could not download Keras' InceptionV3 ImageNet weights")
    assert (
        fid.INCEPTION_WEIGHTS_URL in result.output and "--inception-weights PATH" in result.output
    )
