"""The FID Inception network (`keras_ddpm.inception`) against pytorch-fid and clean-fid.

Random, seeded weights throughout (no download): pytorch-fid builds its own network, which
loads them from the .pth file it would download (`fid_testing.random_pytorch_fid`); ours reads
the same file. pytorch-fid, clean-fid and torch-fidelity are test-only dependencies.
"""

import json
import os

import keras
import numpy as np
import pytest
from fid_testing import import_torchvision
from fid_testing import random_pytorch_fid
from fid_testing import tiny_extractor
from PIL import Image

from keras_ddpm import evaluation
from keras_ddpm import fid
from keras_ddpm import inception
from keras_ddpm.evaluation import EvalConfig


def max_relative_difference(ours, theirs):
    """max |ours - theirs| / max |theirs|: the error relative to the features' scale."""
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.fixture(scope="module")
def pytorch_fid(tmp_path_factory):
    """pytorch-fid's network with random weights (no resizing or scaling inside) and its .pth."""
    return random_pytorch_fid(tmp_path_factory.mktemp("pytorch_fid"), seed=0)


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """Two folders of 4 RGB 32x32 PNGs: smooth random images, and darker ones."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    folders = []
    for name, high in (("generated", 255), ("real", 160)):
        folder = root / name
        folder.mkdir()
        for i in range(4):
            coarse = rng.uniform(0, high, (8, 8, 3)).astype(np.float32)
            image = Image.fromarray(coarse.astype(np.uint8)).resize((32, 32), Image.BILINEAR)
            noisy = np.asarray(image, np.float32) + rng.normal(0, 8, (32, 32, 3))
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
        folders.append(str(folder))
    return folders


def low_rank_fid(x, y):
    """Heusel et al.'s FID of two feature sets with fewer rows than dimensions, in closed form:
    with A, B the centred rows over sqrt(n - 1), Tr((S1 S2)^(1/2)) is the sum of the singular
    values of A B^T. (pytorch-fid's scipy `sqrtm` of a 2048x2048 product takes about a minute
    on this CPU and is ill-conditioned at rank 3.)"""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a = (x - x.mean(0)) / np.sqrt(len(x) - 1)
    b = (y - y.mean(0)) / np.sqrt(len(y) - 1)
    diff = x.mean(0) - y.mean(0)
    return diff @ diff + np.sum(a * a) + np.sum(b * b) - 2 * np.linalg.svd(a @ b.T)[1].sum()


# The network.


@pytest.mark.slow
def test_features_and_logits_match_pytorch_fid(pytorch_fid):
    import torch

    network, path = pytorch_fid
    # CIFAR-sized random images upsampled to 299x299, the use case. (Pixel noise at 299x299
    # excites round-off: there pytorch-fid's float32 differs from its float64 by ~7e-5.)
    small = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    images = fid.resize_images(small, 299, "pytorch-fid") / 127.5 - 1
    with torch.no_grad():
        theirs = network(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))[0]
    theirs = theirs[:, :, 0, 0].numpy()
    model = inception.load_weights(inception.fid_inception_v3(include_top=True), path)
    assert model.output.shape == (None, inception.NUM_CLASSES)
    pool = keras.Model(model.input, model.get_layer("pool_3").output)
    ours = keras.ops.convert_to_numpy(pool.predict_on_batch(images))
    assert ours.shape == (3, 2048) and theirs.std() > 0.1 and (theirs > 0).mean() > 0.5
    # float32 through 94 layers in different orders; measured ~1e-5 on each backend.
    assert max_relative_difference(ours, theirs) <= 1e-4
    # The 1008-way classifier (pytorch-fid's `fc`, which its feature network leaves out).
    state = torch.load(path, weights_only=True)
    logits = theirs @ state["fc.weight"].numpy().T + state["fc.bias"].numpy()
    ours_logits = keras.ops.convert_to_numpy(model.get_layer("fc")(ours))
    assert max_relative_difference(ours_logits, logits) <= 1e-4


@pytest.mark.once
def test_weights_of_another_network_or_no_file_are_one_sentence(tmp_path):
    import torch

    model = inception.fid_inception_v3()
    with pytest.raises(
        FileNotFoundError, match="No FID Inception weights file.*--inception-weights"
    ):
        inception.load_weights(model, str(tmp_path / "missing.pth"))
    other = str(tmp_path / "other.pth")
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, other)
    with pytest.raises(ValueError, match="not pytorch-fid's FID Inception: Conv2d_1a_3x3.conv"):
        inception.load_weights(model, other)
    misshapen = {layer.name.replace("-", "."): layer for layer in model.layers}
    state = {}
    for name, layer in misshapen.items():
        if isinstance(layer, keras.layers.Conv2D):
            kernel = np.zeros(tuple(layer.kernel.shape)[::-1], np.float32)
            state[f"{name}.weight"] = torch.from_numpy(kernel.swapaxes(2, 3).copy())
        elif isinstance(layer, keras.layers.BatchNormalization):
            for part in ("weight", "bias", "running_mean", "running_var"):
                state[f"{name}.{part}"] = torch.ones(layer.gamma.shape[0])
    state["Mixed_7c.branch_pool.bn.bias"] = torch.ones(7)
    torch.save(state, other)
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.bn has shapes"):
        inception.load_weights(model, other)
    state["Mixed_7c.branch_pool.bn.bias"] = torch.ones(192)
    state["AuxLogits.fc.weight"] = torch.ones(2, 2)
    torch.save(state, other)
    with pytest.raises(ValueError, match="1 tensors are not in it, such as AuxLogits.fc.weight"):
        inception.load_weights(model, other)
    del state["AuxLogits.fc.weight"]
    torch.save(state, other)  # the complete layout (with all-ones statistics) loads
    assert inception.load_weights(model, other) is model
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="^broken.pth (is not a complete|holds Python objects)"):
        inception.load_weights(model, str(broken))
    torch.save([torch.zeros(1)], other)
    with pytest.raises(ValueError, match="does not hold a state dict"):
        inception.load_weights(model, other)


@pytest.mark.once
def test_offline_default_weights_are_one_sentence_from_the_cli(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from keras_ddpm.cli import cli

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://github.com: no internet")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "0.png")
    args = ["eval", "--gen-data-dir", str(folder), "--real-data-dir", str(folder)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: Could not download the FID Inception weights")
    assert inception.WEIGHTS_URL in result.output and "--inception-weights PATH" in result.output
    assert os.path.join(inception.weights_cache_dir(), "") in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, [*args, "--inception-weights", "imagenet"])
    assert result.exit_code == 1 and "--features keras-imagenet" in result.output


# Preprocessing: each convention against the library it follows.


@pytest.mark.once
def test_resizing_follows_pytorch_fid_tensorflow_and_clean_fid():
    import tensorflow as tf
    import torch
    import torch.nn.functional as F

    import_torchvision()
    from cleanfid.resize import build_resizer

    rng = np.random.default_rng(2)
    for size in (32, 64, 400):  # up, up, down
        images = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        # pytorch-fid: ToTensor (x / 255), F.interpolate bilinear inside its InceptionV3.
        tensors = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255)
        theirs = F.interpolate(tensors, size=(299, 299), mode="bilinear", align_corners=False)
        theirs = theirs.numpy().transpose(0, 2, 3, 1) * 255
        ours = fid.resize_images(images, 299, "pytorch-fid")
        # (float32 source positions: up to ~0.01 of 255 apart when shrinking 400 -> 299)
        np.testing.assert_allclose(ours, theirs, atol=0.02)
        # The 2015 graph's ResizeBilinear (TF1: no half-pixel centres).
        theirs = tf.compat.v1.image.resize_bilinear(
            images.astype(np.float32), (299, 299), align_corners=False, half_pixel_centers=False
        ).numpy()
        np.testing.assert_allclose(fid.resize_images(images, 299, "tensorflow"), theirs, atol=0.02)
        # clean-fid's "clean" resizer, image by image.
        clean = np.stack([build_resizer("clean")(image) for image in images])
        np.testing.assert_array_equal(fid.resize_images(images, 299, "clean"), clean)
    # The conventions differ: a half-pixel offset, a filter.
    images = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    pytorch_fid, tensorflow = (
        fid.resize_images(images, 299, m) for m in ("pytorch-fid", "tensorflow")
    )
    assert np.abs(pytorch_fid - tensorflow).mean() > 5
    with pytest.raises(ValueError, match="resize must be one of clean, pytorch-fid, tensorflow"):
        fid.resize_images(images, 299, "bilinear")


@pytest.mark.once
def test_each_convention_scales_pixels_as_its_library():
    model = None
    white, black = np.full((1, 4, 4, 3), 255, np.uint8), np.zeros((1, 4, 4, 3), np.uint8)
    clean = fid.FeatureExtractor(model, None, 4, resize="clean", scaling=fid.TF_GRAPH_SCALING)
    pytorch = fid.FeatureExtractor(model, None, 4, resize="pytorch-fid")
    # clean-fid feeds the 2015 graph (x - 128) / 128; pytorch-fid 2 (x / 255) - 1.
    assert clean.preprocess(white).max() == pytest.approx(127 / 128)
    assert clean.preprocess(black).min() == pytest.approx(-1.0)
    assert pytorch.preprocess(white).max() == pytest.approx(1.0)
    assert pytorch.preprocess(black).min() == pytest.approx(-1.0)


# End to end: the FID (and KID) of two image folders, pytorch-fid's and clean-fid's pipelines
# against `eval`'s.


@pytest.mark.once  # the network is compared on every backend above
@pytest.mark.slow
def test_fid_of_two_folders_matches_pytorch_fid_end_to_end(pytorch_fid, image_folders, tmp_path):
    import torch

    import_torchvision()
    from pytorch_fid import fid_score
    from pytorch_fid import inception as pytorch_fid_inception

    _, path = pytorch_fid
    # pytorch-fid's own pipeline: its file reading, ToTensor, its InceptionV3 with its resizing
    # and scaling inside, loading the random weights where it would download.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            pytorch_fid_inception,
            "load_state_dict_from_url",
            lambda *args, **kwargs: torch.load(path, weights_only=True),
        )
        network = pytorch_fid_inception.InceptionV3([3])
    theirs = []
    for folder in image_folders:
        files = sorted(os.path.join(folder, name) for name in os.listdir(folder))
        theirs.append(fid_score.get_activations(files, network, batch_size=4, num_workers=0))
    stats_path = str(tmp_path / "generated.npz")
    config = EvalConfig(
        gen_data_dir=image_folders[0],
        real_data_dir=image_folders[1],
        num_images=4,
        batch_size=4,
        resize="pytorch-fid",
        inception_weights=path,
        use_cache=False,
        kid_subsets=2,
        kid_subset_size=4,
        save_stats=stats_path,
    )
    record = evaluation.evaluate(config, echo=lambda message: None)
    assert record["features"] == "inception-2015" and record["resize"] == "pytorch-fid"
    assert record["num_generated"] == record["num_real"] == 4
    expected = low_rank_fid(*theirs)
    assert expected > 1.0 and record["fid"] == pytest.approx(expected, rel=1e-3)
    # The statistics file is pytorch-fid's format: its own reader takes it.
    mu, sigma = fid_score.compute_statistics_of_path(stats_path, None, 4, 2048, "cpu")
    np.testing.assert_allclose(mu, theirs[0].mean(0), rtol=1e-4, atol=1e-4 * np.abs(mu).max())
    scale = np.abs(sigma).max()
    np.testing.assert_allclose(sigma, np.cov(theirs[0], rowvar=False), atol=1e-3 * scale)


@pytest.mark.once  # the network is compared on every backend above
@pytest.mark.slow
def test_fid_and_kid_of_two_folders_match_clean_fid_end_to_end(pytorch_fid, image_folders):
    import torch

    import_torchvision()
    from cleanfid import fid as clean_fid

    network, path = pytorch_fid

    def the_2015_graph(images):
        """clean-fid's InceptionV3W in "clean" mode, with pytorch-fid's port of the graph: resized
        images in [0, 255], scaled (x - 128) / 128."""
        with torch.no_grad():
            return network((images - 128) / 128)[0][:, :, 0, 0]

    theirs = [
        clean_fid.get_folder_features(
            folder,
            the_2015_graph,
            num_workers=0,
            batch_size=4,
            device=torch.device("cpu"),
            mode="clean",
            verbose=False,
        )
        for folder in image_folders
    ]
    config = EvalConfig(
        gen_data_dir=image_folders[0],
        real_data_dir=image_folders[1],
        num_images=4,
        batch_size=4,
        resize="clean",
        inception_weights=path,
        use_cache=False,
        kid_subsets=3,
        kid_subset_size=4,
    )
    record = evaluation.evaluate(config, echo=lambda message: None)
    assert record["resize"] == "clean" and "clean-fid" in record["note"]
    expected = low_rank_fid(*theirs)
    assert expected > 1.0 and record["fid"] == pytest.approx(expected, rel=1e-3)
    # Subsets of all 4 rows: every one is the whole set, so both KIDs are exact.
    kid = clean_fid.kernel_distance(theirs[0], theirs[1], num_subsets=3, max_subset_size=4)
    assert kid > 0 and record["kid"] == pytest.approx(kid, rel=1e-3)


# KID and the Frechet distance against the libraries' formulas, on the same features.


@pytest.mark.once
def test_kid_and_fid_formulas_agree_with_clean_fid_torch_fidelity_and_pytorch_fid():
    import torch

    import_torchvision()
    from cleanfid import fid as clean_fid
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((60, 64)), rng.standard_normal((50, 64)) * 1.2 + 0.1
    # Subsets of all 50 rows of each set: every subset is the whole set, so the estimates are exact.
    kid_full, kid_std = fid.kernel_inception_distance(x[:50], y, num_subsets=3, subset_size=50)
    assert kid_full > 0 and kid_std == pytest.approx(0.0, abs=1e-12)
    fidelity = kid_features_to_metric(
        torch.from_numpy(x[:50]),
        torch.from_numpy(y),
        kid_subsets=1,
        kid_subset_size=50,
        kid_degree=3,
        kid_gamma=None,
        kid_coef0=1,
        verbose=False,
    )
    assert kid_full == pytest.approx(fidelity["kernel_inception_distance_mean"], rel=1e-9)
    clean = clean_fid.kernel_distance(x[:50], y, num_subsets=1, max_subset_size=50)
    assert kid_full == pytest.approx(clean, rel=1e-9)
    # Random subsets: means over 200 subsets of the same estimator, within 4 standard errors.
    ours, ours_std = fid.kernel_inception_distance(x, y, num_subsets=200, subset_size=20)
    theirs = kid_features_to_metric(
        torch.from_numpy(x), torch.from_numpy(y), kid_subsets=200, kid_subset_size=20, verbose=False
    )
    theirs, theirs_std = theirs.values()
    assert abs(ours - theirs) < 4 * np.hypot(ours_std, theirs_std) / np.sqrt(200)
    # Frechet distance of full-rank statistics: pytorch-fid's and clean-fid's sqrtm forms.
    mu1, sigma1, mu2, sigma2 = (
        x.mean(0),
        np.cov(x, rowvar=False),
        y.mean(0),
        np.cov(y, rowvar=False),
    )
    expected = calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-6)
    assert clean_fid.fid_from_feats(x, y) == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance_from_features(x, y) == pytest.approx(expected, rel=1e-6)


# Reference statistics: pytorch-fid's and clean-fid's .npz as the real side.


@pytest.mark.once
def test_eval_reads_pytorch_fid_statistics_and_writes_its_own(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from keras_ddpm.cli import cli

    monkeypatch.setattr(
        fid, "feature_extractor", lambda *args, batch_size=50, **kwargs: tiny_extractor()
    )
    folders = []
    for name, seed, high in (("generated", 0, 256), ("real", 1, 128)):
        folder = tmp_path / name
        folder.mkdir()
        rng = np.random.default_rng(seed)
        for i in range(12):
            pixels = rng.integers(0, high, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
        folders.append(str(folder))
    common = ["eval", "--gen-data-dir", folders[0], "--no-cache", "--kid-subsets", "2"]
    # First the real folder's statistics, saved as pytorch-fid saves them (mu, sigma only).
    real_stats = str(tmp_path / "real.npz")
    args = ["eval", "--gen-data-dir", folders[1], "--real-data-dir", folders[0], "--no-cache"]
    result = CliRunner().invoke(cli, [*args, "--save-stats", real_stats, "--output", "/dev/null"])
    assert result.exit_code == 0, result.output
    with np.load(real_stats) as f:
        assert {"mu", "sigma", "features", "num_images", "key"} <= set(f.files)
        assert json.loads(str(f["key"]))["features"] == "custom"
        pytorch_fid_format = str(tmp_path / "pytorch_fid_real.npz")
        np.savez_compressed(pytorch_fid_format, mu=f["mu"], sigma=f["sigma"])
    with_folder = tmp_path / "folder.json"
    result = CliRunner().invoke(
        cli, [*common, "--real-data-dir", folders[1], "--output", str(with_folder)]
    )
    assert result.exit_code == 0, result.output
    assert (
        "FID " in result.output
        and "(custom features, clean resize; 12 generated vs 12 real" in (result.output)
    )
    with_stats = tmp_path / "stats.json"
    result = CliRunner().invoke(
        cli, [*common, "--real-stats", pytorch_fid_format, "--output", str(with_stats)]
    )
    assert result.exit_code == 0, result.output
    assert "12 generated vs ? real images" in result.output
    assert "KID not measured: the real statistics file holds no feature rows." in result.output
    folder_record, stats_record = (json.loads(p.read_text()) for p in (with_folder, with_stats))
    # 12 images, 8-d features: both sides full rank, so the sqrtm path equals the exact one.
    assert stats_record["fid"] == pytest.approx(folder_record["fid"], rel=1e-6)
    assert stats_record["kid"] is None and stats_record["num_real"] is None
    assert stats_record["real"] == pytorch_fid_format
    # A file written with other features is refused; a missing one is one sentence.
    monkeypatch.setattr(
        fid,
        "feature_extractor",
        lambda *args, batch_size=50, **kwargs: tiny_extractor(name="other-weights"),
    )
    result = CliRunner().invoke(cli, [*common, "--real-stats", real_stats])
    assert result.exit_code == 1 and "computed with other features: weights tiny-test" in (
        result.output
    )
    result = CliRunner().invoke(cli, [*common, "--real-stats", str(tmp_path / "none.npz")])
    assert result.exit_code == 1 and "No statistics file at" in result.output
    no_stats = str(tmp_path / "no_stats.npz")
    np.savez(no_stats, mean=np.zeros(8))
    result = CliRunner().invoke(cli, [*common, "--real-stats", no_stats])
    assert result.exit_code == 1 and "expected arrays mu and sigma" in result.output
