"""diffusers' `UNet2DModel` folders (`google/ddpm-cifar10-32` and the other DDPM ports on the
Hugging Face Hub), read from their JSON and weight files; diffusers itself is not needed.

A folder holds `config.json` (the architecture) and `diffusion_pytorch_model.safetensors` (or
`.bin`, read with `torch.load(weights_only=True)`); the scheduler's `scheduler_config.json` lies
beside them, one folder up, or in `scheduler/` beside a pipeline's `unet/`. Weight names:
`time_embedding.linear_1`, `conv_in`, `down_blocks.0.resnets.0.norm1`, `.time_emb_proj`,
`.conv_shortcut` (1x1), `down_blocks.1.attentions.0.group_norm` with `to_q/to_k/to_v/to_out.0`
(older files: `query/key/value/proj_attn`), `down_blocks.0.downsamplers.0.conv`, `mid_block`,
`up_blocks.0` (the lowest resolution first), `conv_norm_out`, `conv_out`.
"""

import json
import os

from keras_ddpm.config import DiffusionConfig
from keras_ddpm.config import UNetConfig
from keras_ddpm.convert.checkpoint import Checkpoint
from keras_ddpm.convert.checkpoint import rename
from keras_ddpm.convert.checkpoint import torch_leaf
from keras_ddpm.convert.files import is_torch_file
from keras_ddpm.convert.files import load_safetensors
from keras_ddpm.convert.files import load_torch
from keras_ddpm.convert.files import numpy_state_dict
from keras_ddpm.convert.files import torch_to_keras

FORMAT = "diffusers UNet2DModel"
CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# UNet2DModel's defaults (diffusers 0.42), for the keys an older config.json leaves out.
UNET_DEFAULTS = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "mid_block_type": "UNetMidBlock2D",
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
}
# What keras_ddpm's UNet is: each key's value must be one of these (UNet2DModel's name for it).
REQUIRED = {
    "center_input_sample": (False,),
    "time_embedding_type": ("positional",),
    "mid_block_type": ("UNetMidBlock2D",),
    "mid_block_scale_factor": (1,),
    "downsample_type": ("conv",),
    "upsample_type": ("conv",),
    "act_fn": ("silu", "swish"),
    "resnet_time_scale_shift": ("default",),
    "add_attention": (True,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
}
# diffusers' DDPMScheduler defaults, for the keys a scheduler config leaves out.
SCHEDULER_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "rescale_betas_zero_snr": False,
}
# The `config.json` of google's published DDPM UNets (diffusers' ports of the authors' checkpoints):
# the CIFAR-10 model (35.7M parameters) and the six-level 256x256 layout of CelebA-HQ and LSUN
# (114M). Tests and benchmarks build these architectures offline to compare with diffusers.
_CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    norm_num_groups=32,
    act_fn="silu",
    center_input_sample=False,
    mid_block_scale_factor=1,
    time_embedding_type="positional",
)
PUBLISHED_UNETS = {
    "google/ddpm-cifar10-32": _CIFAR10,
    "google/ddpm-celebahq-256": dict(
        _CIFAR10,
        sample_size=256,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    ),
}
SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "epsilon", "sample": "x0", "v_prediction": "v"}
VARIANCES = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
}
RESNET = {"time_emb_proj": "temb_proj", "conv_shortcut": "nin_shortcut"}
ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}


def find_folders(path):
    """(the UNet's folder, its scheduler_config.json or None) of a diffusers folder: a UNet
    folder, or a pipeline folder with `unet/`; None when `path` is neither."""
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, "unet", CONFIG)):
        unet = os.path.join(path, "unet")
        candidates = [os.path.join(path, "scheduler", SCHEDULER_CONFIG)]
    elif _is_unet_config(os.path.join(path, CONFIG)):
        unet, parent = path, os.path.dirname(os.path.abspath(path))
        candidates = [
            os.path.join(path, SCHEDULER_CONFIG),
            os.path.join(parent, SCHEDULER_CONFIG),
            os.path.join(parent, "scheduler", SCHEDULER_CONFIG),
        ]
    else:
        return None
    return unet, next((c for c in candidates if os.path.isfile(c)), None)


def _is_unet_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and (
        config.get("_class_name") == "UNet2DModel" or "down_block_types" in config
    )


def weights_file(unet_folder):
    """The folder's weight file, safetensors preferred; None when there is none."""
    paths = [os.path.join(unet_folder, name) for name in WEIGHT_FILES]
    return next((path for path in paths if os.path.isfile(path)), None)


def input_files(path):
    """The files a conversion of the folder `path` reads (for the cache's fingerprint)."""
    folders = find_folders(path)
    if folders is None:
        return []
    unet, scheduler = folders
    files = [os.path.join(unet, CONFIG), weights_file(unet), scheduler]
    return [f for f in files if f is not None]


def read(path, name=None):
    """A `Checkpoint` of the diffusers folder at `path` (`find_folders`); `name` (a Hub id, say)
    names it in messages and in the model's record of its source."""
    name = name or os.path.basename(os.path.normpath(path))
    folders = find_folders(path)
    if folders is None:
        raise ValueError(f"{name} holds no diffusers UNet2DModel ({CONFIG} with UNet2DModel).")
    unet_folder, scheduler_path = folders
    if scheduler_path is None:
        raise ValueError(
            f"{name} has no {SCHEDULER_CONFIG} beside {CONFIG} or one folder up; download the "
            f"model's {SCHEDULER_CONFIG} (a pipeline's scheduler/{SCHEDULER_CONFIG}) into "
            f"{os.path.abspath(unet_folder)}."
        )
    config = {**UNET_DEFAULTS, **_load_json(os.path.join(unet_folder, CONFIG), name)}
    unet = unet_config(config, name)
    diffusion = diffusion_config(_load_json(scheduler_path, name), name)
    path = weights_file(unet_folder)
    if path is None:
        raise ValueError(
            f"{name} has {CONFIG} but neither {' nor '.join(WEIGHT_FILES)}; download the weights "
            f"into {os.path.abspath(unet_folder)}."
        )
    tensors = _load_weights(path)
    levels = len(unet.channel_multipliers)
    renamed = rename(tensors, _rules(levels), torch_leaf, name)
    weights = {key: torch_to_keras(array) for key, array in renamed.items()}
    return Checkpoint(
        unet=unet,
        diffusion=diffusion,
        weights=weights,
        source=f"{name} ({FORMAT}, {os.path.basename(path)})",
        name=name.replace("/", "--"),
    )


def _load_json(path, name):
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as error:
        raise ValueError(
            f"{name}'s {os.path.basename(path)} is not valid JSON ({error})."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{name}'s {os.path.basename(path)} is not a JSON object.")
    return config


def _load_weights(path):
    if path.endswith(".safetensors"):
        return load_safetensors(path)
    if not is_torch_file(path):
        raise ValueError(f"{os.path.basename(path)} is not a PyTorch file.")
    tensors = numpy_state_dict(load_torch(path))
    if tensors is None:
        raise ValueError(f"{os.path.basename(path)} does not hold a state dict of tensors.")
    return tensors


def unet_config(config, name):
    """The `UNetConfig` of a UNet2DModel config.json (with `UNET_DEFAULTS` filled in); ValueError
    naming the first setting keras_ddpm's UNet cannot express."""

    def refuse(why):
        raise ValueError(f"{name} is a UNet2DModel keras_ddpm's UNet cannot express: {why}.")

    for key, allowed in REQUIRED.items():
        if config[key] not in allowed:
            refuse(f"{key}={config[key]!r} (keras_ddpm's is {allowed[0]!r})")
    if (config["freq_shift"], config["flip_sin_to_cos"]) != (1, False):
        refuse(
            f"freq_shift={config['freq_shift']} with flip_sin_to_cos={config['flip_sin_to_cos']} "
            "(DDPM's timestep embedding is freq_shift=1, flip_sin_to_cos=False)"
        )
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    channels = list(config["block_out_channels"])
    if not (len(down) == len(up) == len(channels)):
        refuse("different numbers of down blocks, up blocks and block_out_channels")
    attention = [kind == "AttnDownBlock2D" for kind in down]
    if any(kind not in ("DownBlock2D", "AttnDownBlock2D") for kind in down) or any(
        kind not in ("UpBlock2D", "AttnUpBlock2D") for kind in up
    ):
        refuse(f"block types {down} / {up} (keras_ddpm has DownBlock2D and AttnDownBlock2D)")
    if [kind == "AttnUpBlock2D" for kind in reversed(up)] != attention:
        refuse("attention at different resolutions on the way down and up")
    base = channels[0]
    if any(c % base for c in channels):
        refuse(f"block_out_channels={channels} are not multiples of the first")
    heads_dim = config["attention_head_dim"]
    single_head = [c for c, a in zip(channels, attention) if a] + [channels[-1]]
    if heads_dim is not None and any(heads_dim != c for c in single_head):
        refuse(f"multi-head attention (attention_head_dim={heads_dim}); keras_ddpm's has one head")
    groups = config["norm_num_groups"]
    if config["attn_norm_num_groups"] not in (None, groups):
        refuse(f"attn_norm_num_groups={config['attn_norm_num_groups']} besides {groups}")
    if config["time_embedding_dim"] not in (None, 4 * base):
        refuse(f"time_embedding_dim={config['time_embedding_dim']} (keras_ddpm's is 4 x {base})")
    if config["in_channels"] != config["out_channels"]:
        refuse(f"{config['in_channels']} input and {config['out_channels']} output channels")
    if config["downsample_padding"] not in (0, 1):
        refuse(f"downsample_padding={config['downsample_padding']}")
    size = config["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            refuse(f"non-square sample_size={size}")
        size = size[0]
    if not isinstance(size, int):
        refuse(f"sample_size={size!r}")
    return UNetConfig(
        image_size=size,
        image_channels=config["in_channels"],
        base_channels=base,
        channel_multipliers=tuple(c // base for c in channels),
        num_res_blocks=config["layers_per_block"],
        attention_resolutions=tuple(size // 2**i for i, a in enumerate(attention) if a),
        dropout=float(config["dropout"]),
        num_groups=groups,
        downsample_padding="same" if config["downsample_padding"] == 0 else "symmetric",
        norm_epsilon=float(config["norm_eps"]),
    )


def diffusion_config(scheduler, name):
    """The `DiffusionConfig` of a scheduler config (DDPMScheduler's, DDIMScheduler's...): the
    schedule, T, the prediction type, the variance type (where it has one) and clipping."""
    config = {**SCHEDULER_DEFAULTS, **scheduler}

    def refuse(why):
        raise ValueError(f"{name}'s {SCHEDULER_CONFIG} asks for {why}, which keras_ddpm lacks.")

    if config["trained_betas"] is not None:
        refuse("trained_betas")
    if config["beta_schedule"] not in SCHEDULES:
        refuse(f"beta_schedule={config['beta_schedule']!r}")
    if config["prediction_type"] not in PREDICTIONS:
        refuse(f"prediction_type={config['prediction_type']!r}")
    if config["variance_type"] not in VARIANCES:
        refuse(f"variance_type={config['variance_type']!r}")
    if config["thresholding"]:
        refuse("dynamic thresholding")
    if config["rescale_betas_zero_snr"]:
        refuse("rescale_betas_zero_snr")
    if config["clip_sample"] and config["clip_sample_range"] != 1.0:
        refuse(f"clip_sample_range={config['clip_sample_range']}")
    return DiffusionConfig(
        timesteps=int(config["num_train_timesteps"]),
        schedule=SCHEDULES[config["beta_schedule"]],
        beta_start=float(config["beta_start"]),
        beta_end=float(config["beta_end"]),
        prediction=PREDICTIONS[config["prediction_type"]],
        variance=VARIANCES[config["variance_type"]],
        clip_denoised=bool(config["clip_sample"]),
    )


def _rules(levels):
    """`rename`'s rules for a UNet of `levels` levels (up_blocks count from the lowest one)."""
    attention = "|".join(name.replace(".", r"\.") for name in ATTENTION)

    def up(index):
        return levels - 1 - int(index)

    return (
        (r"^time_embedding\.linear_([12])\.(\w+)$", lambda m: f"temb_dense{int(m[1]) - 1}/{m[2]}"),
        (r"^conv_in\.(\w+)$", r"conv_in/\1"),
        (r"^conv_norm_out\.(\w+)$", r"norm_out/\1"),
        (r"^conv_out\.(\w+)$", r"conv_out/\1"),
        (
            r"^down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)$",
            lambda m: f"down{m[1]}_block{m[2]}/{RESNET.get(m[3], m[3])}/{m[4]}",
        ),
        (
            rf"^down_blocks\.(\d+)\.attentions\.(\d+)\.({attention})\.(\w+)$",
            lambda m: f"down{m[1]}_attn{m[2]}/{ATTENTION[m[3]]}/{m[4]}",
        ),
        (r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)$", r"down\1_downsample/conv/\2"),
        (
            r"^mid_block\.resnets\.([01])\.(\w+)\.(\w+)$",
            lambda m: f"mid_block{int(m[1]) + 1}/{RESNET.get(m[2], m[2])}/{m[3]}",
        ),
        (
            rf"^mid_block\.attentions\.0\.({attention})\.(\w+)$",
            lambda m: f"mid_attn/{ATTENTION[m[1]]}/{m[2]}",
        ),
        (
            r"^up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)$",
            lambda m: f"up{up(m[1])}_block{m[2]}/{RESNET.get(m[3], m[3])}/{m[4]}",
        ),
        (
            rf"^up_blocks\.(\d+)\.attentions\.(\d+)\.({attention})\.(\w+)$",
            lambda m: f"up{up(m[1])}_attn{m[2]}/{ATTENTION[m[3]]}/{m[4]}",
        ),
        (
            r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)$",
            lambda m: f"up{up(m[1])}_upsample/conv/{m[2]}",
        ),
    )
