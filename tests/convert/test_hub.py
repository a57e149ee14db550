"""keras_ddpm.convert.hub: Hub ids through huggingface_hub's cache, and offline."""

import os
import shutil

import huggingface_hub.constants
import pytest
from convert_testing import six_levels  # noqa: F401 (a fixture)

from keras_ddpm.convert import convert
from keras_ddpm.convert import detect_format
from keras_ddpm.convert import hub

pytestmark = pytest.mark.once  # files and messages; the conversion itself is tested per backend

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache, offline (as this machine is: HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_repository(cache, repo_id, folder):
    """`folder`'s files as huggingface_hub caches a download of `repo_id` (refs/main and a
    snapshot named by the revision)."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / REVISION
    shutil.copytree(folder, snapshot)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REVISION)
    return str(snapshot)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("google/ddpm-cifar10-32", True),
        ("google/ddpm-ema-church-256", True),
        ("runs/mnist/model.keras", False),
        ("google/ddpm-cifar10-32/unet", False),
        ("../ddpm", False),
        ("model.pth", False),
    ],
)
def test_what_is_taken_for_a_hub_id(source, expected):
    assert hub.looks_like_repo_id(source) is expected


def test_a_cached_hub_id_converts_offline(offline_cache, six_levels):
    snapshot = cache_repository(offline_cache, "google/ddpm-celebahq-256", six_levels[0])
    assert detect_format("google/ddpm-celebahq-256") == "hub"
    assert os.path.realpath(hub.download("google/ddpm-celebahq-256")) == os.path.realpath(snapshot)
    model = convert("google/ddpm-celebahq-256")
    assert model.config.source.startswith("google/ddpm-celebahq-256 (diffusers UNet2DModel")
    assert model.config.unet.image_size == 256


def test_offline_without_the_files_says_which_to_download_and_where(offline_cache):
    with pytest.raises(ValueError) as caught:
        hub.download("google/ddpm-cifar10-32")
    message = str(caught.value)
    assert message.startswith("Could not download google/ddpm-cifar10-32 from the Hugging Face Hub")
    for named in ("config.json", "scheduler_config.json", "diffusion_pytorch_model.safetensors"):
        assert named in message
    assert "https://huggingface.co/google/ddpm-cifar10-32 into one folder" in message
    assert "\n" not in message and message.count(". ") == 0
