"""keras_ddpm.preflight: a mistaken command is refused before Keras, TensorFlow or a model loads
(issue 22), with one sentence; "did you mean" for presets and dataset names."""

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from keras_ddpm import cli as cli_module
from keras_ddpm import preflight
from keras_ddpm.backend import child_environment
from keras_ddpm.cli import cli
from keras_ddpm.config import PRESETS
from keras_ddpm.data import check_dataset_name

pytestmark = pytest.mark.once  # parsing and files only: no backend, no model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_model_load(monkeypatch):
    """Makes loading a model fail with a known sentence: a command that reaches it has passed
    its preflight checks, and no command here waits for Keras."""

    def refuse(path):
        raise ValueError("the model would load now")

    monkeypatch.setattr(cli_module, "load_model_file", refuse)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result, exit_code=1):
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


def test_mistaken_commands_answer_in_one_line_within_seconds(tmp_path):
    """Each as a user runs it: a fresh interpreter, one line on stderr, no traceback, and well
    under the ~8 s it takes to import TensorFlow (measured 0.4-1.2 s each on 2 shared cores)."""
    commands = [
        ["sample", "--save-path", "out.txt"],
        ["sample", "--eta", "2"],
        ["sample", "--model", "saved_models"],
        ["train", "--dataset", str(tmp_path / "no_such_folder"), "--out", str(tmp_path / "run")],
    ]
    env = child_environment("tensorflow")  # the slowest backend to import, were it imported
    for args in commands:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "cli.py", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        seconds = time.perf_counter() - start
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
        assert seconds < 4, (args, seconds)
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(
        os.path.join(REPO, "out.txt")
    )


def test_save_path_extension_names_what_pillow_writes(no_model_load, tmp_path):
    line = error_line(invoke("sample", "--save-path", tmp_path / "out.txt"))
    assert line == (
        f"Error: --save-path {tmp_path / 'out.txt'} must end in .jpg, .jpeg, .png, .webp, .bmp, "
        ".gif, .tif, .tiff (the images Pillow writes that keras_ddpm reads)."
    )
    line = error_line(
        invoke("sample", "--mode", "denoising_process", "--save-path", tmp_path / "a.jpg")
    )
    assert "must end in .png, .webp, .gif, .tif, .tiff (the animated images" in line
    for name in ("grid.PNG", "grid.webp", "nested/folder/grid.jpg"):
        assert "the model would load now" in error_line(
            invoke("sample", "--save-path", tmp_path / name)
        )


def test_outputs_under_a_file_are_refused(no_model_load, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for args, option in (
        (["sample", "--save-path", a_file / "x.png"], "--save-path"),
        (["sample", "--save-dir", a_file / "tiles"], "--save-dir"),
        (["train", "--out", a_file / "run"], "--out"),
        (["export", a_file, a_file / "x.keras"], "OUTPUT"),
    ):
        line = error_line(invoke(*args))
        assert line.startswith(f"Error: {option} ") and f"{a_file} is a file, not a folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_unwritable_folders_are_refused(no_model_load, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = error_line(invoke("sample", "--save-path", locked / "x.png"))
    assert f"{locked} is not writable" in line


def test_eta_above_1_needs_its_flag_and_guidance_is_not_negative(no_model_load):
    line = error_line(invoke("sample", "--eta", "1.5"))
    assert line == (
        "Error: --eta 1.5 is above 1 (eta 1 already draws with DDPM's noise); pass "
        "--allow-eta-above-1 to sample with it anyway."
    )
    assert "would load now" in error_line(invoke("sample", "--eta", "1.5", "--allow-eta-above-1"))
    assert "would load now" in error_line(invoke("sample", "--eta", "1"))
    result = invoke("sample", "--guidance", "-0.5")
    assert result.exit_code == 2 and "-0.5 is not in the range x>=0" in result.output
    line = error_line(invoke("eval", "--model", "m.keras", "--dataset", "mnist_5k", "--eta", "3"))
    assert "No model file at m.keras" in line  # the model path first
    result = invoke("eval", "--gen-data-dir", "g", "--dataset", "mnist_5k", "--guidance", "-1")
    assert result.exit_code == 2


def test_model_paths_are_checked_before_keras(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("b.keras", "a.keras"):
        (folder / name).write_text("")
    for args in (["sample", "--model", folder], ["info", "--model", folder]):
        assert error_line(invoke(*args)) == (
            f"Error: {folder} is a folder; pass one of the .keras files in it with --model: "
            f"{folder / 'a.keras'}, {folder / 'b.keras'}."
        )
    line = error_line(invoke("sample", "--model", tmp_path / "missing.keras"))
    assert "No model file at" in line and "missing.keras" in line


def test_mask_boxes_and_images_are_checked_before_the_model(no_model_load, tmp_path):
    for mask in ("1,2,3", "8,8,4,12"):
        line = error_line(invoke("sample", "--mode", "inpainting", "--mask", mask))
        assert "A mask box is 'x0,y0,x1,y1' in pixels with x0 < x1 and y0 < y1" in line
    line = error_line(invoke("sample", "--mode", "inpainting", "--mask", tmp_path / "m.png"))
    assert line == f"Error: No mask image at {tmp_path / 'm.png'}."
    line = error_line(invoke("sample", "--mode", "inpainting", "--mask", "2,2,10,10"))
    assert "would load now" in line  # whether it fits the image is known once the model loads


def test_dataset_names_suggest_the_closest(no_model_load, tmp_path):
    line = error_line(invoke("train", "--dataset", "celeba", "--out", tmp_path / "run"))
    assert line == "Error: Unknown dataset 'celeba'; did you mean celeb_a or celeb_a_hq?"
    line = error_line(invoke("sample", "--mode", "interpolation", "--dataset", "cifar_10"))
    assert "did you mean cifar10" in line
    assert not os.path.exists(tmp_path / "run")
    for name in ("mnist_5k", "mnist_5k:test", "cifar10:train[:10%]", "celeb_a", "oxford_iiit_pet"):
        check_dataset_name(name)  # listed, or registered with tfds though not listed
    with pytest.raises(ValueError, match="mnist_5k has splits 'train', 'test' and 'all'"):
        check_dataset_name("mnist_5k:validation")
    with pytest.raises(FileNotFoundError, match="No folder at"):
        check_dataset_name("./no/such/folder")


def test_class_cond_on_a_folder_without_class_subfolders(tmp_path):
    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        Image.new("L", (8, 8), i).save(flat / f"{i}.png")
    line = error_line(invoke("train", "--dataset", flat, "--class-cond", "--out", tmp_path / "run"))
    assert line == (
        f"Error: --class-cond needs labels, and {flat} has no class subfolders: put each class's "
        "images in its own subfolder (e.g. cats/ and dogs/), one level down."
    )
    assert not os.path.exists(tmp_path / "run")


def test_presets_are_listed_and_suggested():
    result = invoke("info", "--list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    for line, preset in zip(lines, PRESETS.values()):
        assert line.endswith(preset.description)
    result = invoke("info", "--preset", "mnst")
    assert result.exit_code == 2 and "Did you mean 'mnist'?" in result.output
    assert "exactly one of --preset" in error_line(invoke("info"))
    assert "--list alone" in error_line(invoke("info", "--list", "--preset", "tiny"))
    code = (
        "import sys; from keras_ddpm.cli import cli; "
        "cli(['info', '--list'], standalone_mode=False); "
        "print([m for m in ('keras', 'tensorflow', 'numpy') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "[]", result.stderr


def test_default_outputs_go_to_the_samples_folder():
    assert preflight.default_save_path("normal") == os.path.join("samples", "samples.png")
    assert preflight.default_save_path("denoising_process") == os.path.join(
        "samples", "samples.gif"
    )
    assert "samples/" in open(os.path.join(REPO, ".gitignore")).read().split()
