"""Sampling modes (library and `cli.py sample`) on the tiny preset with random weights."""

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import randomize_weights
from PIL import Image

from keras_ddpm import DiffusionModel
from keras_ddpm import sampling_modes as modes
from keras_ddpm.cli import cli
from keras_ddpm.images import read_gif

FAST = {"sampler": "ddim", "steps": 4}


@pytest.fixture(scope="module")
def model():
    return randomize_weights(DiffusionModel.from_preset("tiny", seed=0))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 1)).astype("float32")


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return str(path)


def test_denoising_process_frames(model):
    frames = modes.denoising_process(model, 4, num_frames=3, seed=1, **FAST)
    assert frames.shape == (3, 4, 16, 16, 1) and frames.dtype == np.uint8
    # Frame 0 is x_T, the last frame the samples themselves.
    np.testing.assert_array_equal(
        frames[-1],
        model.generate(
            noise=np.random.default_rng(1).standard_normal((4, 16, 16, 1)).astype("float32"), **FAST
        ),
    )
    assert not np.array_equal(frames[0], frames[-1])


def test_sequence_records_x0_at_evenly_spaced_steps(model):
    rows = modes.sequence(model, 4, num_frames=3, seed=2, **FAST)
    assert rows.shape == (4, 3, 16, 16, 1)
    # With DDIM the last step's x0_hat is the sample.
    np.testing.assert_array_equal(rows[:, -1], model.generate(4, seed=2, **FAST))
    assert modes._evenly_spaced_steps(4, 3) == [0, 2, 3] and modes._evenly_spaced_steps(2, 5) == [
        0,
        1,
    ]


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_interpolation_row_and_end_tiles(model, images, space):
    row = modes.interpolation(
        model, images[0], images[1], timestep=60, num_points=3, space=space, seed=3, **FAST
    )
    assert row.shape == (5, 16, 16, 1)
    np.testing.assert_array_equal(row[0], np.round((images[0] + 1) * 127.5).astype(np.uint8))
    np.testing.assert_array_equal(row[-1], np.round((images[1] + 1) * 127.5).astype(np.uint8))
    # Weights 0 and 1 are the reconstructions of image 1 and image 2 on their own.
    if space == "pixel":
        noise = np.random.default_rng(3).standard_normal((16, 16, 1)).astype("float32")
        x_t = modes.noise_images(model, images, 60, noise)
        alone = model.generate(noise=x_t, start_timestep=60, return_uint8=False, **FAST)
    else:
        alone = model.generate(
            noise=model.invert(images, steps=4), eta=0.0, return_uint8=False, **FAST
        )
    alone = np.round((alone + 1) * 127.5)
    assert (
        np.abs(row[1].astype(int) - alone[0]).max() <= 1
        and np.abs(row[3].astype(int) - alone[1]).max() <= 1
    )
    assert np.abs(row[2].astype(int) - row[1]).max() > 0


def test_slerp_ends_and_norm():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(1000), rng.standard_normal(1000)
    mixes = modes.slerp(a, b, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(mixes[0], a, atol=1e-5) and np.testing.assert_allclose(
        mixes[2], b, atol=1e-5
    )
    # linear mixing would shrink it ~30%
    assert abs(np.linalg.norm(mixes[1]) / np.linalg.norm(a) - 1) < 0.1


def test_coarse_to_fine_rows(model, images):
    assert modes.default_coarse_timesteps(1000) == [999, 750, 500, 250, 100, 25]
    grid = modes.coarse_to_fine(
        model, images[0], timesteps=[99, 2], num_samples=4, seed=4, sampler="ddpm", steps=4
    )
    assert grid.shape == (2, 5, 16, 16, 1)
    # Samples share x_t but differ; near t = 0 they differ far less than from t = T.
    spread = [np.abs(row[1:].astype(float) - row[1:].mean(0)).mean() for row in grid]
    assert spread[0] > 2 * spread[1] > 0
    with pytest.raises(ValueError, match="stochastic"):
        modes.coarse_to_fine(model, images[0], timesteps=[50], **FAST)


def test_inpainting_keeps_the_known_pixels(model, images):
    from keras_ddpm.images import parse_box

    fill = parse_box("4,4,12,12", 16)
    assert fill.sum() == 64 and fill[4, 4, 0] == 1 and fill[12, 12, 0] == 0
    row = modes.inpainting(model, images[0], fill, num_samples=4, seed=5, **FAST)
    assert row.shape == (6, 16, 16, 1)
    original = np.round((images[0] + 1) * 127.5).astype(np.uint8)
    known = fill[..., 0] == 0
    for sample in row[2:]:
        assert np.abs(sample[known].astype(int) - original[known]).max() <= 1
    assert np.abs(row[2][~known].astype(int) - original[~known]).max() > 10


def run_cli(*args):
    result = CliRunner().invoke(cli, ["sample", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.once
def test_cli_modes_end_to_end(model_file, tmp_path):
    common = ["--model", model_file, "--steps", "4", "--padding", "1", "--batch-size", "4"]
    run_cli(*common, "--mode", "normal", "--save-path", str(tmp_path / "n.png"))
    assert np.array(Image.open(tmp_path / "n.png")).shape == (2 * 17 + 1, 2 * 17 + 1)
    run_cli(
        *common,
        "--mode",
        "denoising_process",
        "--n-frames",
        "3",
        "--hold-ms",
        "900",
        "--save-path",
        str(tmp_path / "d.gif"),
    )
    frames, durations = read_gif(tmp_path / "d.gif")
    assert frames.shape == (3, 35, 35, 1) and durations[-1] == 900 and durations[0] < 900
    run_cli(
        *common, "--mode", "sequence", "--n-frames", "3", "--save-path", str(tmp_path / "s.png")
    )
    assert np.array(Image.open(tmp_path / "s.png")).shape == (4 * 17 + 1, 3 * 17 + 1)
    run_cli(
        *common,
        "--mode",
        "interpolation",
        "--image_idx1",
        "3",
        "--image_idx2",
        "7",
        "--interpolate_at",
        "50",
        "--n-points",
        "4",
        "--save-path",
        str(tmp_path / "i.png"),
    )
    assert np.array(Image.open(tmp_path / "i.png")).shape == (17 + 1, 6 * 17 + 1)
    run_cli(
        *common,
        "--mode",
        "coarse_to_fine",
        "--coarse-timesteps",
        "99,50,3",
        "--save-path",
        str(tmp_path / "c.png"),
    )
    assert np.array(Image.open(tmp_path / "c.png")).shape == (3 * 17 + 1, 5 * 17 + 1)
    run_cli(
        *common,
        "--mode",
        "inpainting",
        "--mask",
        "0,0,8,16",
        "--save-path",
        str(tmp_path / "p.png"),
    )
    tiles = np.array(Image.open(tmp_path / "p.png"))
    assert tiles.shape == (17 + 1, 6 * 17 + 1)
    # The known right half of every sample equals the real image (tile 0).
    image = tiles[1:17, 1:17]
    for k in range(2, 6):
        tile = tiles[1:17, 1 + 17 * k : 17 + 17 * k]
        assert np.abs(tile[:, 8:].astype(int) - image[:, 8:]).max() <= 1
    output = run_cli(
        *common,
        "--sampler",
        "dpm_solver",
        "--save-dir",
        str(tmp_path / "single"),
        "--n-images",
        "8",
    )
    files = sorted((tmp_path / "single").iterdir())
    assert len(files) == 8 and "wrote 8 images" in output
    assert np.array(Image.open(files[0])).shape == (16, 16)


@pytest.mark.once
def test_cli_errors_are_one_sentence(model_file, tmp_path, monkeypatch):
    from keras_ddpm import saving

    monkeypatch.setattr(saving, "SAVED_MODELS", str(tmp_path / "none"))
    result = CliRunner().invoke(cli, ["sample"])
    assert (
        result.exit_code == 1
        and "pass --model" in result.output
        and "Traceback" not in result.output
    )
    for args, message in [
        (["--mode", "inpainting", "--mask", "0,0,40,4"], "must lie inside"),
        (["--mode", "interpolation", "--image-idx2", "999999"], "no image at index 999999"),
        (["--mode", "coarse_to_fine", "--sampler", "ddim"], "stochastic sampler"),
        (["--mode", "sequence", "--save-dir", str(tmp_path)], "--save-dir"),
    ]:
        result = CliRunner().invoke(
            cli,
            [
                "sample",
                "--model",
                model_file,
                "--steps",
                "2",
                "--save-path",
                str(tmp_path / "x.png"),
                *args,
            ],
        )
        assert result.exit_code == 1 and message in result.output, result.output
