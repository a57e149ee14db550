import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from keras_ddpm import build_unet
from keras_ddpm import get_preset
from keras_ddpm import load_model
from keras_ddpm.cli import cli

pytestmark = pytest.mark.once  # the CLI is backend-free (tests/backend/test_isolation.py)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """`python cli.py train` on the tiny preset, class-conditional, for 3 steps."""
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--preset",
            "tiny",
            "--steps",
            "3",
            "--batch_size",
            "8",
            "--lr",
            "1e-3",
            "--class-cond",
            "--seed",
            "1",
            "--out",
            str(out),
            "--verbose",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_writes_model_and_config(trained_run):
    out, output = trained_run
    assert "final loss" in output and "model saved to" in output
    model = load_model(str(out / "model.keras"))
    assert model.config.name == "tiny" and model.num_classes == 10
    assert model.config.train.batch_size == 8 and model.config.train.learning_rate == 1e-3
    assert int(model.optimizer.iterations) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "mnist_5k" and config["config"]["train"]["train_steps"] == 3


def test_sample_writes_a_grid(trained_run, tmp_path):
    out, _ = trained_run
    path = tmp_path / "grid.png"
    result = CliRunner().invoke(
        cli,
        [
            "sample",
            "--model_params",
            str(out / "model.keras"),
            "--mode",
            "normal",
            "--sampler",
            "ddpm",
            "--steps",
            "4",
            "--batch_size",
            "6",
            "--seed",
            "3",
            "--class-label",
            "7",
            "--guidance",
            "1.5",
            "--padding",
            "1",
            "--save_path",
            str(path),
        ],
    )
    assert result.exit_code == 0, result.output
    grid = np.array(Image.open(path))
    # 6 tiles of 16x16 in a 3-column grid with 1-pixel padding: 2 rows.
    assert grid.shape == (2 * 17 + 1, 3 * 17 + 1)
    again = tmp_path / "again.png"
    CliRunner().invoke(
        cli,
        [
            "sample",
            "--model",
            str(out / "model.keras"),
            "--sampler",
            "ddpm",
            "--steps",
            "4",
            "--batch-size",
            "6",
            "--seed",
            "3",
            "--class-label",
            "7",
            "--guidance",
            "1.5",
            "--padding",
            "1",
            "--save-path",
            str(again),
        ],
    )
    np.testing.assert_array_equal(np.array(Image.open(again)), grid)


def test_info_prints_config_and_parameters(trained_run):
    out, _ = trained_run
    result = CliRunner().invoke(cli, ["info", "--preset", "tiny"])
    assert result.exit_code == 0
    expected = build_unet(get_preset("tiny").unet).count_params()
    assert result.output.strip().splitlines()[-1] == f"parameters: {expected}"
    assert json.loads(result.output[: result.output.rindex("}") + 1])["unet"]["image_size"] == 16
    result = CliRunner().invoke(cli, ["info", "--model", str(out / "model.keras")])
    assert result.exit_code == 0
    conditional = build_unet(get_preset("tiny").replace(num_classes=10).unet).count_params()
    assert f"parameters: {conditional}" in result.output
    # The optimizer's count, beside the preset's plan (here the run's --steps 3 too).
    assert "trained_steps: 3 (planned: train.train_steps 3)" in result.output.splitlines()


def test_class_grids_fill_their_rows_and_land_in_samples(trained_run, tmp_path, monkeypatch):
    out, _ = trained_run
    monkeypatch.chdir(tmp_path)
    args = ["sample", "--model", str(out / "model.keras"), "--steps", "2", "--padding", "1"]
    result = CliRunner().invoke(
        cli, [*args, "--batch-size", "16", "--sampler", "ddpm", "--eta", "1"]
    )
    assert result.exit_code == 0, result.output
    assert (
        result.stderr == "warning: --eta is ignored: only the ddim sampler has an eta, not ddpm.\n"
    )
    assert "wrote 10 normal tiles to samples/samples.png" in result.stdout
    # 16 images of 10 classes: one full row of 10 16x16 tiles, a column per class.
    grid = np.array(Image.open(tmp_path / "samples" / "samples.png"))
    assert grid.shape == (17 + 1, 10 * 17 + 1)
    result = CliRunner().invoke(cli, [*args, "--batch-size", "6", "--save-path", "six.png"])
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert np.array(Image.open(tmp_path / "six.png")).shape == (17 + 1, 6 * 17 + 1)
    assert sorted(os.listdir(tmp_path)) == ["samples", "six.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["info"], "exactly one of --preset"),
        (["sample", "--model", "missing.keras"], "No model file at missing.keras"),
        (["train", "--preset", "tiny", "--dataset", "imagenet_9000"], "imagenet_9000"),
    ],
)
def test_user_errors_are_one_sentence(args, message, tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, [*args, "--out", str(run_dir)] if args[0] == "train" else args)
    assert not run_dir.exists()  # a bad option writes nothing
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1


def test_sample_rejects_bad_values(trained_run, tmp_path):
    out, _ = trained_run
    model = str(out / "model.keras")
    for args, message in [
        (["--class-label", "12"], "Class label must be a whole number from 0 to 9"),
        (["--steps", "1000"], "from 1 to 100 (the model's 100 training timesteps)"),
        (["--img_size", "64"], "does not match the model's image size 16"),
    ]:
        result = CliRunner().invoke(
            cli, ["sample", "--model", model, "--save-path", str(tmp_path / "x.png"), *args]
        )
        assert result.exit_code == 1 and message in result.output, result.output
    result = CliRunner().invoke(cli, ["sample", "--model", model, "--steps", "0"])
    assert result.exit_code == 2 and "--steps" in result.output
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    result = CliRunner().invoke(cli, ["sample", "--model", str(bad)])
    assert result.exit_code == 1 and "bad.keras is not a complete .keras file" in result.output


@pytest.mark.once
def test_an_unknown_preset_is_a_usage_error(tmp_path):
    for args in (
        ["info", "--preset", "huge"],
        ["train", "--preset", "huge", "--out", str(tmp_path)],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "'huge' is not one of 'tiny', 'mnist', 'ddpm_cifar10'" in result.output
    assert not os.listdir(tmp_path)


def test_cli_offers_every_sampler_the_library_has():
    from keras_ddpm import sampling_options

    for command in ("sample", "eval"):
        (sampler,) = [p for p in cli.commands[command].params if p.name == "sampler"]
        assert tuple(sampler.type.choices) == sampling_options.SAMPLERS
    assert sampling_options.SAMPLERS == ("ddim", "ddpm", "dpm_solver")


@pytest.mark.slow
def test_cli_runs_as_a_program():
    import subprocess
    import sys

    from keras_ddpm import backend

    env = backend.child_environment(backend.backend_name())
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "cli.py", "info", "--preset", "ddpm_cifar10"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("parameters: 35746307")
    result = subprocess.run(
        [sys.executable, "cli.py", "info", "--preset", "nope"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    # A preset is a choice: click refuses an unknown one before Keras loads (usage error, 2).
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Error: Invalid value for '--preset': 'nope' is not one of 'tiny'" in result.stderr


def test_export_drops_the_optimizer_and_keeps_both_networks(trained_run, tmp_path):
    out, _ = trained_run
    source = load_model(str(out / "model.keras"))
    for name, path in (("run", out), ("file", out / "model.keras")):
        exported = tmp_path / f"{name}.keras"
        result = CliRunner().invoke(cli, ["export", str(path), str(exported)])
        assert result.exit_code == 0, result.output
        assert "trained 3 steps" in result.output
        saved = os.path.getsize(out / "model.keras") - os.path.getsize(exported)
        assert saved >= 2 * 4 * source.network.count_params()  # Adam's two float32 moments left out
        model = load_model(str(exported))
        assert getattr(model, "optimizer", None) is None and model.config == source.config
        assert model.trained_steps == source.trained_steps == 3  # recorded in the file
        for ours, theirs in (
            (model.network, source.network),
            (model.ema_network, source.ema_network),
        ):
            for a, b in zip(ours.get_weights(), theirs.get_weights()):
                np.testing.assert_array_equal(a, b)
    result = CliRunner().invoke(cli, ["export", str(tmp_path), str(tmp_path / "x.keras")])
    assert result.exit_code == 1 and "holds neither model.keras nor a checkpoint" in result.output
