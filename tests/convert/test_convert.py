"""keras_ddpm.convert (format detection, `convert`) and `python cli.py convert`: a published
checkpoint in, a model that samples with no flags out; every bad input one sentence."""

import json
import os
import re
import shutil

import huggingface_hub.constants
import pytest
import torch
from click.testing import CliRunner
from convert_testing import ddim_state_dict
from convert_testing import small32  # noqa: F401 (a fixture)
from convert_testing import small_unet  # noqa: F401 (a fixture)

from keras_ddpm.cli import cli
from keras_ddpm.convert import detect_format


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_sentence(result, pattern):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.once
def test_formats_are_told_by_names_and_first_bytes(small32, small_unet, tmp_path):
    folder, _ = small32
    assert detect_format(folder) == "diffusers"
    assert detect_format(os.path.join(folder, "diffusion_pytorch_model.safetensors")) == "diffusers"
    state = tmp_path / "model.ckpt"
    torch.save(ddim_state_dict(small_unet), state)
    assert detect_format(state) == "pytorch"
    assert detect_format("google/ddpm-cifar10-32") == "hub"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert detect_format(text) is None
    assert detect_format(tmp_path / "model.keras") is None
    assert detect_format(tmp_path / "missing" / "model.pth") is None


@pytest.mark.once
def test_cli_convert_writes_a_model_with_its_settings_and_source(small_unet, tmp_path):
    run = tmp_path / "ckpt.pth"
    states = [ddim_state_dict(small_unet, prefix="module."), {}, 1, 10]
    states.append(ddim_state_dict(small_unet, scale=0.5))
    torch.save(states, run)
    out = tmp_path / "ddim.keras"
    result = invoke("convert", run, out, "--weights", "raw")
    assert result.exit_code == 0, result.output
    assert (
        f"wrote {out} in " in result.output
        and "ckpt.pth (the DDIM code's PyTorch UNet" in result.output
    )
    assert "variance fixed_large, clip x0: False" in result.output
    info = invoke("info", "--model", out)
    assert info.exit_code == 0, info.output
    assert (
        "weights: ckpt.pth (the DDIM code's PyTorch UNet, DDIM ckpt.pth); sampling with raw weights"
        in info.output
    )
    assert (
        json.loads(info.output[: info.output.index("parameters:")])["diffusion"]["clip_denoised"]
        is False
    )


def _broken_folder(small32, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(small32[0], folder)
    return folder


@pytest.mark.once
def test_bad_inputs_are_one_sentence_each(small32, small_unet, tmp_path):
    out = tmp_path / "out.keras"
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    assert_one_sentence(
        invoke("convert", text, out),
        r"notes\.txt is none of the formats keras_ddpm converts: a diffusers",
    )
    assert_one_sentence(
        invoke("convert", tmp_path / "nowhere" / "x.pth", out),
        r"No file or folder at .*x\.pth, and it is not a Hugging Face Hub id",
    )
    truncated = _broken_folder(small32, tmp_path, "truncated")
    weights = truncated / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert_one_sentence(
        invoke("convert", truncated, out), r"is not a complete safetensors file .*download it again"
    )
    state = tmp_path / "ckpt.pth"
    torch.save(ddim_state_dict(small_unet), state)
    state.write_bytes(state.read_bytes()[:5000])
    assert_one_sentence(invoke("convert", state, out), r"ckpt\.pth is not a complete PyTorch file")
    multihead = _broken_folder(small32, tmp_path, "multihead")
    config = json.loads((multihead / "config.json").read_text())
    (multihead / "config.json").write_text(json.dumps({**config, "attention_head_dim": 8}))
    assert_one_sentence(invoke("convert", multihead, out), r"cannot express: multi-head attention")
    unscheduled = _broken_folder(small32, tmp_path, "unscheduled")
    os.remove(unscheduled / "scheduler_config.json")
    assert_one_sentence(
        invoke("convert", unscheduled, out),
        r"has no scheduler_config\.json beside config\.json or one folder up; download",
    )
    assert_one_sentence(invoke("convert", small32[0], tmp_path / "out.h5"), "must end in .keras")
    assert not out.exists()


@pytest.mark.once
def test_a_hub_id_offline_names_the_files_to_download(tmp_path, monkeypatch):
    """Offline (HF_HUB_OFFLINE, as this machine is) with an empty Hugging Face cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = invoke("convert", "google/ddpm-cifar10-32", tmp_path / "o.keras")
    assert_one_sentence(
        result,
        r"^Error: Could not download google/ddpm-cifar10-32 from the Hugging Face Hub .*download "
        r"config\.json, scheduler_config\.json and diffusion_pytorch_model\.safetensors \(or "
        r"\.bin\) from https://huggingface\.co/google/ddpm-cifar10-32 into one folder",
    )
