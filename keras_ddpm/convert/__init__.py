"""Published checkpoints as keras_ddpm models: `convert(source)` detects the format, reads the
architecture and the sampling settings from the files, and returns a `DiffusionModel`.

    model = convert("google/ddpm-cifar10-32")      # a Hub id, through huggingface_hub's cache
    model = convert("ckpt.pth", weights="raw")      # DDIM's run checkpoint, its trained weights
    path = converted_model_path("path/to/diffusers_folder")  # converted once, cached

Formats (one module each): `diffusers` (UNet2DModel folders, and Hub ids through `hub`), `ddim`
(the DDIM code's PyTorch UNet: DDIM's ckpt.pth and pesser's ports of the DDPM checkpoints),
`tf_checkpoint` (the DDPM authors' TensorFlow checkpoints) and `pytorch_ddpm`
(w86763777/pytorch-ddpm's UNet: seed 000's and w86763777's checkpoints). PyTorch files load with
`torch.load(weights_only=True)`, never unpickling other objects.
"""

import os

from keras_ddpm.convert import ddim
from keras_ddpm.convert import diffusers
from keras_ddpm.convert import files
from keras_ddpm.convert import hub
from keras_ddpm.convert import pytorch_ddpm
from keras_ddpm.convert import tf_checkpoint
from keras_ddpm.convert.cache import converted_model_path
from keras_ddpm.convert.checkpoint import WEIGHTS
from keras_ddpm.convert.checkpoint import Checkpoint
from keras_ddpm.convert.checkpoint import to_model

__all__ = [
    "WEIGHTS",
    "Checkpoint",
    "convert",
    "convert_model",
    "converted_model_path",
    "detect_format",
    "read",
]

FORMATS = (
    "a diffusers UNet2DModel folder or Hugging Face Hub id, a DDIM-code PyTorch UNet (ckpt.pth or "
    "a state dict), a DDPM authors' TensorFlow checkpoint (model.ckpt-N) or a "
    "w86763777/pytorch-ddpm or seed 000 checkpoint"
)
_TORCH_READERS = (ddim, pytorch_ddpm)
_DIFFUSERS_FILES = (diffusers.CONFIG, *diffusers.WEIGHT_FILES)


def detect_format(source):
    """The kind of checkpoint `source` names, from its names and first bytes (nothing is loaded):
    "diffusers" (a folder, or a file in one), "hub" (a Hub id), "tf_checkpoint", "pytorch" (a
    file torch.save wrote: `read` tells its format by its keys), or None."""
    source = os.fspath(source)
    if source.endswith(".keras"):
        return None
    if os.path.isdir(source):
        if diffusers.find_folders(source) is not None:
            return "diffusers"
        return "tf_checkpoint" if tf_checkpoint.find_prefix(source) else None
    if tf_checkpoint.find_prefix(source):
        return "tf_checkpoint"
    if os.path.isfile(source):
        folder = os.path.dirname(os.path.abspath(source))
        if os.path.basename(source) in _DIFFUSERS_FILES and diffusers.find_folders(folder):
            return "diffusers"
        return "pytorch" if files.is_torch_file(source) else None
    return "hub" if hub.looks_like_repo_id(source) else None


def read(source, image_size=None):
    """The `Checkpoint` at `source` (any format `detect_format` names). `image_size`: the size the
    model was trained at, for the formats that do not record it (DDIM's, the TensorFlow
    checkpoints and pytorch-ddpm's; the first two assume attention at 16x16 otherwise)."""
    source = os.fspath(source)
    kind = detect_format(source)
    if kind is None:
        if not os.path.exists(source):
            raise FileNotFoundError(
                f"No file or folder at {source}, and it is not a Hugging Face Hub id (owner/name)."
            )
        raise ValueError(
            f"{os.path.basename(os.path.normpath(source))} is none of the formats keras_ddpm "
            f"converts: {FORMATS}."
        )
    if kind in ("hub", "diffusers"):
        if kind == "hub":
            checkpoint = diffusers.read(hub.download(source), name=source)
        else:
            folder = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
            checkpoint = diffusers.read(folder)
        if image_size not in (None, checkpoint.unet.image_size):
            raise ValueError(
                f"{source} records its image size ({checkpoint.unet.image_size}); --image-size "
                "is for the formats that do not."
            )
        return checkpoint
    if kind == "tf_checkpoint":
        return tf_checkpoint.read(tf_checkpoint.find_prefix(source), image_size)
    return _read_torch(source, image_size)


def _read_torch(path, image_size):
    name = os.path.basename(path)
    contents = files.load_torch(path)
    for reader in _TORCH_READERS:
        if reader.recognizes(contents):
            return reader.read(contents, name, image_size)
    if isinstance(contents, dict) and "time_embedding.linear_1.weight" in contents:
        raise ValueError(
            f"{name} holds a diffusers UNet2DModel's weights without its config.json; put it in "
            "a folder with config.json and scheduler_config.json and pass the folder."
        )
    raise ValueError(f"{name} is a PyTorch file, but of no UNet keras_ddpm converts: {FORMATS}.")


def convert(source, weights="ema", image_size=None):
    """The `DiffusionModel` of the checkpoint at `source`: a diffusers folder, a Hub id, or a
    checkpoint file or folder of another format (see `read`). `weights`: "ema" (default) samples
    with the exponential moving average where the file holds one, "raw" with the trained
    weights. The noise schedule, the prediction type, the variance and clipping come with it,
    and `model.config.source` says where the weights came from."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}. Received: weights={weights!r}")
    return to_model(read(source, image_size), weights)


convert_model = convert  # `keras_ddpm.convert_model`, beside `keras_ddpm.load_model`
