"""w86763777/pytorch-ddpm's UNet (model.py), which seed 000 (KimRass/DDPM, unet.py) copies.

Its modules are flat lists: `time_embedding.timembedding` (a fixed table, then two Linears),
`head`, `downblocks.K` (ResBlocks with `block1`, `temb_proj`, `block2`, `shortcut` and, at the
levels with attention, `attn` inside the block; a `DownSample` `main` convolution between
levels), `middleblocks.0/1`, `upblocks.K` (ResBlocks, `UpSample` `main`), `tail`. Where it differs
from DDPM's UNet, keras_ddpm's has an option, so the conversion is exact:

- the timestep table interleaves sin and cos at frequencies 10000^(-2i/ch)
  (`timestep_embedding="interleaved"`; the file's table is checked against it);
- DownSample is Conv2d(stride 2, padding=1) (`downsample_padding="symmetric"`);
- GroupNorm(32, C) keeps PyTorch's eps 1e-5 (`norm_epsilon=1e-5`);
- attention inside a ResBlock, after the residual sum, is DDPM's block followed by attention.

Containers: seed 000's published `ddpm_celeba_32x32.pth` / `ddpm_celeba_64x64.pth` (its DDPM
wrapper's state dict, keys `model.<unet key>`) and its `ckpt.pth` ({"model", "optimizer", ...});
w86763777's `ckpt.pt` ({"net_model", "ema_model", ...}). DataParallel's `module.` and
torch.compile's `_orig_mod.` prefixes are dropped. Neither file records the image size: it comes
from the caller, else from an "NxN" in the file name (seed 000's names carry it), else 32 for
w86763777's CIFAR-10 runs.
"""

import math
import re

import numpy as np

from keras_ddpm.config import UNetConfig
from keras_ddpm.convert.checkpoint import Checkpoint
from keras_ddpm.convert.checkpoint import ddpm_settings
from keras_ddpm.convert.checkpoint import torch_leaf
from keras_ddpm.convert.files import numpy_state_dict
from keras_ddpm.convert.files import torch_to_keras

FORMAT = "w86763777/pytorch-ddpm's UNet (seed 000's)"
TABLE = "time_embedding.timembedding.0.weight"
PREFIXES = ("module.", "_orig_mod.", "model.")
NUM_GROUPS = 32  # nn.GroupNorm(32, C) throughout
NORM_EPSILON = 1e-5  # PyTorch's default
CIFAR10_SIZE = 32  # w86763777's runs
# A ResBlock's modules: (our layer: the block or its attention, our sublayer).
RES_BLOCK = {
    "block1.0": ("block", "norm1"),
    "block1.2": ("block", "conv1"),
    "temb_proj.1": ("block", "temb_proj"),
    "block2.0": ("block", "norm2"),
    "block2.3": ("block", "conv2"),
    "shortcut": ("block", "nin_shortcut"),
    "attn.group_norm": ("attn", "norm"),
    "attn.proj_q": ("attn", "q"),
    "attn.proj_k": ("attn", "k"),
    "attn.proj_v": ("attn", "v"),
    "attn.proj": ("attn", "proj_out"),
}
FIXED = {
    "time_embedding.timembedding.1": "temb_dense0",
    "time_embedding.timembedding.3": "temb_dense1",
    "head": "conv_in",
    "tail.0": "norm_out",
    "tail.2": "conv_out",
}
_SIZE_IN_NAME = re.compile(r"(\d+)\s*[x\u00d7X]\s*(\d+)")


def _strip(key):
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _states(contents):
    """(trained state, EMA state or None, container name) of a loaded file of this format."""
    if isinstance(contents, dict) and "net_model" in contents:
        return contents["net_model"], contents.get("ema_model"), "w86763777 ckpt.pt"
    if isinstance(contents, dict) and isinstance(contents.get("model"), dict):
        return contents["model"], None, "seed 000 ckpt.pth"
    return contents, None, "state dict"


def recognizes(contents):
    state, _, _ = _states(contents)
    return isinstance(state, dict) and any(_strip(str(key)) == TABLE for key in state)


def read(contents, name, image_size=None):
    """A `Checkpoint` of a loaded PyTorch file of this format (`recognizes` it)."""
    state, ema_state, container = _states(contents)
    arrays = _arrays(state, name)
    table = arrays.pop(TABLE)
    timesteps, base_channels = table.shape
    _check_table(table, name)
    paths, levels, blocks, attention_levels = _layout(arrays, name)
    weights = _weights(arrays, paths)
    ema_weights = None
    if ema_state is not None:
        ema_arrays = _arrays(ema_state, f"{name} (EMA)")
        ema_arrays.pop(TABLE)
        ema_weights = _weights(ema_arrays, paths)
    if image_size is None:
        image_size = _size_from_name(name) or (
            CIFAR10_SIZE if container.startswith("w86") else None
        )
    if image_size is None:
        raise ValueError(
            f"{name} does not record its image size; pass the size it was trained at "
            "(--image-size 32 or 64 for seed 000's CelebA models)."
        )
    channels = weights["conv_in/kernel"].shape[-1]
    multipliers = tuple(
        weights[f"down{i}_block0/conv1/kernel"].shape[-1] // channels for i in levels
    )
    unet = UNetConfig(
        image_size=int(image_size),
        image_channels=int(weights["conv_in/kernel"].shape[2]),
        base_channels=int(channels),
        channel_multipliers=multipliers,
        num_res_blocks=blocks,
        attention_resolutions=tuple(int(image_size) // 2**i for i in attention_levels),
        dropout=0.1,
        num_groups=NUM_GROUPS,
        timestep_embedding="interleaved",
        downsample_padding="symmetric",
        norm_epsilon=NORM_EPSILON,
    )
    # Both codes sample with sigma_t^2 = beta_t and compute the mean from eps without clipping
    # x_0 (seed 000's take_denoising_step, w86763777's p_mean_variance).
    return Checkpoint(
        unet=unet,
        diffusion=ddpm_settings("fixed_large", clip_denoised=False, timesteps=int(timesteps)),
        weights=weights,
        ema_weights=ema_weights,
        source=f"{name} ({FORMAT}, {container})",
        name=name,
    )


def _size_from_name(name):
    """The N of an "NxN" (or "N×N") in a file name, as seed 000's `ddpm_celeba_64×64.pth`."""
    sizes = [int(a) for a, b in _SIZE_IN_NAME.findall(name) if a == b]
    return sizes[-1] if sizes else None


def _arrays(state, name):
    arrays = numpy_state_dict(state)
    if arrays is None:
        raise ValueError(f"{name} does not hold a state dict of tensors where one belongs.")
    arrays = {_strip(key): value for key, value in arrays.items()}
    if TABLE not in arrays:
        raise ValueError(f"{name} has no timestep table ({TABLE}).")
    return arrays


def interleaved_table(timesteps, channels):
    """w86763777's TimeEmbedding table: row t is [sin(t f_0), cos(t f_0), sin(t f_1), ...] with
    f_i = 10000^(-2i / channels)."""
    frequencies = np.exp(-np.arange(0, channels, 2) / channels * math.log(10000))
    angles = np.arange(timesteps)[:, None] * frequencies[None, :]
    return np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(timesteps, channels)


def _check_table(table, name):
    difference = np.abs(table - interleaved_table(*table.shape)).max()
    if not difference < 1e-3:  # float32 rounding of t * f reaches about 1e-4 at t = 999
        raise ValueError(
            f"{name}'s timestep table is not w86763777/pytorch-ddpm's sinusoidal one (it differs "
            f"by up to {difference:.3g}); keras_ddpm cannot reproduce it."
        )


def _indices(arrays, group):
    pattern = re.compile(rf"^{group}\.(\d+)\.")
    return sorted({int(m.group(1)) for key in arrays if (m := pattern.match(key))})


def _layout(arrays, name):
    """({source module: our layer path}, level indices, blocks a level, levels with attention)
    from walking the flat down, middle and up lists."""
    paths = dict(FIXED)
    level, block, blocks_per_level, attention_levels = 0, 0, [], set()
    for index in _indices(arrays, "downblocks"):
        module = f"downblocks.{index}"
        if f"{module}.main.weight" in arrays:
            paths[f"{module}.main"] = f"down{level}_downsample/conv"
            blocks_per_level.append(block)
            level, block = level + 1, 0
            continue
        paths.update(_res_block(module, f"down{level}_block{block}", f"down{level}_attn{block}"))
        if f"{module}.attn.proj_q.weight" in arrays:
            attention_levels.add(level)
        block += 1
    blocks_per_level.append(block)
    if len(set(blocks_per_level)) != 1 or not blocks_per_level[0]:
        raise ValueError(
            f"{name} has {blocks_per_level} residual blocks at its levels; keras_ddpm's UNet "
            "needs the same number at every level."
        )
    levels = len(blocks_per_level)
    paths.update(_res_block("middleblocks.0", "mid_block1", "mid_attn"))
    paths.update(_res_block("middleblocks.1", "mid_block2", "mid_block2_attn"))
    level, block = levels - 1, 0
    for index in _indices(arrays, "upblocks"):
        module = f"upblocks.{index}"
        if f"{module}.main.weight" in arrays:
            paths[f"{module}.main"] = f"up{level}_upsample/conv"
            level, block = level - 1, 0
            continue
        paths.update(_res_block(module, f"up{level}_block{block}", f"up{level}_attn{block}"))
        block += 1
    return paths, range(levels), blocks_per_level[0], sorted(attention_levels)


def _res_block(module, block, attention):
    layers = {"block": block, "attn": attention}
    return {f"{module}.{sub}": f"{layers[kind]}/{ours}" for sub, (kind, ours) in RES_BLOCK.items()}


def _weights(arrays, paths):
    weights = {}
    for key, array in arrays.items():
        module, _, leaf = key.rpartition(".")
        if module not in paths:
            raise ValueError(
                f"A {FORMAT} checkpoint holds a weight a DDPM UNet has no place for ({key}); its "
                "architecture is not one keras_ddpm supports."
            )
        path = paths[module]
        weights[f"{path}/{torch_leaf(path, leaf)}"] = torch_to_keras(array)
    return weights
