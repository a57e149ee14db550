"""keras_ddpm.convert.cache, and `--model` of sample taking a diffusers folder: converted once."""

import os

import pytest
from click.testing import CliRunner
from convert_testing import small32  # noqa: F401 (a fixture)

from keras_ddpm import convert as convert_package
from keras_ddpm.cli import cli
from keras_ddpm.convert import converted_model_path
from keras_ddpm.sample_request import SampleRequest
from keras_ddpm.saving import load_model_file


@pytest.mark.once
def test_a_source_converts_once_and_again_when_it_changes(small32, tmp_path, monkeypatch):
    folder, _ = small32
    calls = []
    original = convert_package.convert

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(convert_package, "convert", counting)
    first = converted_model_path(folder, cache_dir=str(tmp_path))
    assert converted_model_path(folder, cache_dir=str(tmp_path)) == first and len(calls) == 1
    scheduler = os.path.join(folder, "scheduler_config.json")
    info = os.stat(scheduler)
    os.utime(scheduler, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    try:
        assert converted_model_path(folder, cache_dir=str(tmp_path)) != first
    finally:
        os.utime(scheduler, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert len(calls) == 2


@pytest.mark.once
def test_sample_takes_a_diffusers_folder_and_its_settings(small32, tmp_path, monkeypatch):
    """`sample --model FOLDER` converts into the cache and samples with the scheduler config's
    variance (fixed_large) and clipping, with no flags."""
    folder, _ = small32
    cache = tmp_path / "converted"
    monkeypatch.setenv("KERAS_DDPM_CONVERTED", str(cache))
    out = tmp_path / "grid.png"
    args = ["sample", "--model", folder, "--steps", "2", "--batch-size", "2", "--save-path", out]
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert os.path.getsize(out) > 0 and len(os.listdir(cache)) == 1
    model = load_model_file(folder)  # from the cache
    assert len(os.listdir(cache)) == 1
    request = SampleRequest(sampler="ddpm", steps=2).resolve(model)
    assert (request.variance, request.clip_denoised) == ("fixed_large", True)
    assert SampleRequest(variance="fixed_small").resolve(model).variance == "fixed_small"


@pytest.mark.once
def test_a_model_trained_here_keeps_the_defaults():
    from keras_ddpm import DiffusionModel

    model = DiffusionModel.from_preset("tiny")
    request = SampleRequest().resolve(model)
    assert (request.variance, request.clip_denoised) == ("fixed_small", True)
    assert request.generate_options()["clip_denoised"] is True
    assert "variance" not in SampleRequest().generate_options()  # left to the model
