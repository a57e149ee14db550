"""Hugging Face Hub ids ("google/ddpm-cifar10-32"): the diffusers folder, from huggingface_hub's
cache when it is there, else downloaded into that cache (its usual place, ~/.cache/huggingface,
or $HF_HOME / $HF_HUB_CACHE)."""

import os
import re

# "owner/name" as the Hub spells ids; a path that exists, or a .keras file, is never taken for one.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_CONFIGS = ["model_index.json", "config.json", "scheduler_config.json"]
_CONFIGS += ["unet/config.json", "scheduler/scheduler_config.json"]
_SAFETENSORS = ["diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"]
_BIN = ["diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.bin"]


def looks_like_repo_id(source):
    return (
        bool(_REPO_ID.match(source))
        and ".." not in source
        and not source.endswith(".keras")
        and not os.path.exists(source)
    )


def _complete(folder):
    from keras_ddpm.convert import diffusers

    folders = diffusers.find_folders(folder)
    return folders is not None and diffusers.weights_file(folders[0]) is not None


def download(repo_id):
    """The local folder of `repo_id`'s diffusers files (config, scheduler config, and the weights:
    safetensors where the repository has them, else the .bin); ValueError with one sentence when
    they can be neither found in the cache nor downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError
    from huggingface_hub.errors import RepositoryNotFoundError
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        folder = snapshot_download(
            repo_id, allow_patterns=_CONFIGS + _SAFETENSORS + _BIN, local_files_only=True
        )
        if _complete(folder):
            return folder
    except OSError:  # not in the cache (LocalEntryNotFoundError)
        pass
    try:
        folder = snapshot_download(repo_id, allow_patterns=_CONFIGS + _SAFETENSORS)
        if not _complete(folder):  # an older repository: weights as .bin only
            folder = snapshot_download(repo_id, allow_patterns=_CONFIGS + _BIN)
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError):
        raise ValueError(
            f"{repo_id} is not a Hugging Face Hub model this machine may download (no such "
            "repository, or a private or gated one); check the id, or pass a local diffusers "
            "folder."
        ) from None
    except OSError as error:  # offline (HF_HUB_OFFLINE, no network): LocalEntryNotFoundError...
        raise ValueError(
            f"Could not download {repo_id} from the Hugging Face Hub ({type(error).__name__}); "
            f"on a machine online, download config.json, scheduler_config.json and "
            f"diffusion_pytorch_model.safetensors (or .bin) from https://huggingface.co/{repo_id} "
            "into one folder, copy it here and pass that folder instead of the id (there is no "
            f"local file or folder named {repo_id} either)."
        ) from None
    if not _complete(folder):
        raise ValueError(
            f"{repo_id} on the Hugging Face Hub holds no diffusers UNet2DModel (config.json and "
            "diffusion_pytorch_model.safetensors or .bin, at its top or in unet/)."
        )
    return folder
