"""The CLI's error boundary: every failure a user can cause is one `Error:` line and a non-zero
exit, never a traceback (issue 18, defects 8, 9 and 11)."""

import errno
import os
import re

import keras
import pytest
from click.testing import CliRunner

from keras_ddpm import DiffusionModel
from keras_ddpm.cli import cli

pytestmark = pytest.mark.once  # the CLI is backend-free (tests/backend/test_isolation.py)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained tiny model saved as `.keras`."""
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    DiffusionModel.from_preset("tiny", seed=0).save(path)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_error_line(result, pattern, exit_code=1):
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("option", ["--grad-clip", "--lr", "--ema-decay", "--weight-decay"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_train_refuses_non_finite_numbers(option, value, tmp_path):
    result = invoke("train", option, value, "--out", tmp_path / "run")
    assert_one_error_line(
        result,
        rf"Invalid value for .{option}.: {value} is not (a finite number|in the range)",
        exit_code=2,
    )
    assert not os.path.exists(tmp_path / "run")


def test_output_folders_that_are_files_are_refused(tmp_path):
    existing = tmp_path / "a_file"
    existing.write_text("")
    assert_one_error_line(
        invoke("train", "--out", existing),
        "'--out': .*a_file is a file; give a folder",
        exit_code=2,
    )
    assert_one_error_line(
        invoke("sample", "--save-dir", existing), "'--save-dir'.*a_file is a file", exit_code=2
    )
    assert_one_error_line(invoke("sample", "--guidance", "nan"), "not a finite number", exit_code=2)


@pytest.mark.parametrize("command", ["sample", "info", "export"])
def test_a_keras_model_that_is_not_a_diffusion_model_is_named_as_such(command, tmp_path):
    path = tmp_path / "classifier.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    args = {
        "sample": ["sample", "--model", path],
        "info": ["info", "--model", path],
        "export": ["export", path, tmp_path / "out.keras"],
    }
    assert_one_error_line(
        invoke(*args[command]),
        r"classifier\.keras holds a Keras Sequential, not a keras_ddpm DiffusionModel",
    )


def test_truncated_or_foreign_files_are_not_called_missing(model_file, tmp_path):
    data = open(model_file, "rb").read()
    truncated, text = tmp_path / "truncated.keras", tmp_path / "text.keras"
    truncated.write_bytes(data[: len(data) // 2])
    text.write_text("not a zip archive")
    for path in (truncated, text):
        result = invoke("info", "--model", path)
        assert_one_error_line(
            result, rf"{path.name} is not a complete \.keras file: it is not a complete zip file"
        )
        assert "not found" not in result.output.lower()
    assert_one_error_line(
        invoke("info", "--model", tmp_path / "missing.keras"), r"No model file at .*missing\.keras"
    )


def test_os_errors_are_one_sentence_and_unexpected_ones_one_line_unless_verbose(
    model_file, tmp_path, monkeypatch
):
    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(DiffusionModel, "save", full_disk)
    out = tmp_path / "inference.keras"
    assert_one_error_line(
        invoke("export", model_file, out), r"^Error: No space left on device: .*inference\.keras$"
    )

    def bug(self, *args, **kwargs):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(DiffusionModel, "for_inference", bug)
    result = invoke("export", model_file, out)
    assert_one_error_line(
        result,
        r"unexpected RuntimeError: an internal bug \(`python cli.py -v \.\.\.` shows the "
        r"traceback\)",
    )
    verbose = invoke("-v", "export", model_file, out)
    assert verbose.exit_code == 1 and isinstance(verbose.exception, RuntimeError)


def test_options_the_model_ignores_are_named_and_a_bad_box_stops_before_sampling(
    model_file, tmp_path, monkeypatch
):
    from keras_ddpm import sample_request

    monkeypatch.chdir(tmp_path)
    args = ["sample", "--model", model_file, "--steps", "2", "--batch-size", "2"]
    result = invoke(*args, "--guidance", "2", "--class-label", "3", "--variance", "fixed_large")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [  # the tiny preset is unconditional; ddim by default
        "warning: --variance is ignored: only the ddpm sampler draws with a variance, not ddim.",
        "warning: --guidance is ignored: the model is unconditional.",
        "warning: --class-label is ignored: the model is unconditional.",
    ]
    assert os.path.isfile(tmp_path / "samples" / "samples.png")

    def sampled(*args, **kwargs):
        raise AssertionError("sampled before the mask box was checked")

    monkeypatch.setattr(sample_request, "run", sampled)
    assert_one_error_line(
        invoke(*args, "--mode", "inpainting", "--mask", "0,0,20,8"),
        r"^Error: The mask box '0,0,20,8' must lie inside the 16x16 image",
    )


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the boundary is backend-neutral; one backend trains (the quickest)",
)
def test_a_full_disk_while_checkpointing_stops_training_with_one_sentence(tmp_path, monkeypatch):
    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(DiffusionModel, "save", full_disk)
    result = invoke(
        "train",
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--sample-every",
        "0",
        "--verbose",
        "0",
        "--out",
        tmp_path / "run",
    )
    assert_one_error_line(result, r"^Error: No space left on device: .*\.keras$")
