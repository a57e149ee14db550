"""The PyTorch port of the DDPM authors' UNet that the DDIM code loads (ermongroup/ddim,
models/diffusion.py; pesser/pytorch_diffusion's ports of the DDPM checkpoints).

Its names are the TensorFlow code's in PyTorch form: `temb.dense.0`, `conv_in`,
`down.0.block.0.norm1`, `down.1.attn.0.q` (1x1 convolutions), `down.0.downsample.conv`,
`mid.block_1`, `mid.attn_1`, `up.3.upsample.conv`, `norm_out`, `conv_out`. Two containers:

- a plain state dict (pesser's `model-790000.ckpt` ports: the DDPM authors' models);
- DDIM's `ckpt.pth`, the list [model, optimizer, epoch, step, ema] its runner saves, whose model
  keys carry DataParallel's `module.` prefix and whose EMA keys do not.

The architecture matches keras_ddpm's UNet exactly (same padding, embedding and epsilon).
"""

import dataclasses

from keras_ddpm.convert.checkpoint import Checkpoint
from keras_ddpm.convert.checkpoint import authors_variance
from keras_ddpm.convert.checkpoint import ddpm_settings
from keras_ddpm.convert.checkpoint import infer_unet_config
from keras_ddpm.convert.checkpoint import rename
from keras_ddpm.convert.checkpoint import torch_leaf
from keras_ddpm.convert.files import numpy_state_dict
from keras_ddpm.convert.files import torch_to_keras

FORMAT = "the DDIM code's PyTorch UNet"
MARKER = "temb.dense.0.weight"
RULES = (
    (r"^temb\.dense\.(\d)\.(\w+)$", r"temb_dense\1/\2"),
    (r"^(conv_in|norm_out|conv_out)\.(\w+)$", r"\1/\2"),
    (r"^(down|up)\.(\d+)\.block\.(\d+)\.(\w+)\.(\w+)$", r"\1\2_block\3/\4/\5"),
    (r"^(down|up)\.(\d+)\.attn\.(\d+)\.(\w+)\.(\w+)$", r"\1\2_attn\3/\4/\5"),
    (r"^down\.(\d+)\.downsample\.conv\.(\w+)$", r"down\1_downsample/conv/\2"),
    (r"^up\.(\d+)\.upsample\.conv\.(\w+)$", r"up\1_upsample/conv/\2"),
    (r"^mid\.block_(\d)\.(\w+)\.(\w+)$", r"mid_block\1/\2/\3"),
    (r"^mid\.attn_1\.(\w+)\.(\w+)$", r"mid_attn/\1/\2"),
)
# The DDIM runner's ckpt.pth: [model, optimizer, epoch, step] plus the EMA's shadow weights.
MODEL_ENTRY, EMA_ENTRY = 0, 4


def _strip(state):
    return {key.removeprefix("module."): value for key, value in state.items()}


def recognizes(contents):
    """Whether `contents` (a loaded PyTorch file) is a state dict or a DDIM ckpt.pth list of
    this format."""
    if isinstance(contents, (list, tuple)) and contents:
        contents = contents[MODEL_ENTRY]
    return isinstance(contents, dict) and any(
        str(key).removeprefix("module.") == MARKER for key in contents
    )


def read(contents, name, image_size=None):
    """A `Checkpoint` of a loaded PyTorch file of this format (`recognizes` it); `name` is the
    file's, for messages and the model's record of its source."""
    is_ddim_run = isinstance(contents, (list, tuple))
    model_state = contents[MODEL_ENTRY] if is_ddim_run else contents
    ema_state = contents[EMA_ENTRY] if is_ddim_run and len(contents) > EMA_ENTRY else None
    weights = _weights(model_state, name)
    ema_weights = None if ema_state is None else _weights(ema_state, f"{name} (EMA)")
    unet = infer_unet_config(weights, name, image_size, num_groups=32, norm_epsilon=1e-6)
    # DDPM and DDIM trained at 32x32 and 64x64 with dropout 0.1, at 256x256 without.
    unet = dataclasses.replace(unet, dropout=0.1 if unet.image_size <= 64 else 0.0)
    diffusion = settings(unet.image_size, is_ddim_run)
    kind = "DDIM ckpt.pth" if is_ddim_run else "state dict"
    return Checkpoint(
        unet=unet,
        diffusion=diffusion,
        weights=weights,
        ema_weights=ema_weights,
        source=f"{name} ({FORMAT}, {kind})",
        name=name,
    )


def settings(image_size, is_ddim_run):
    """DDPM's process; DDIM's runs (configs/*.yml) sample with var_type fixedlarge and without
    clipping x_0 (its generalized_steps); the DDPM authors' models, which the plain state dicts
    port, clip and use their authors' variance."""
    if is_ddim_run:
        return ddpm_settings("fixed_large", clip_denoised=False)
    return ddpm_settings(authors_variance(image_size), clip_denoised=True)


def _weights(state, name):
    arrays = numpy_state_dict(state)
    if arrays is None:
        raise ValueError(f"{name} does not hold a state dict of tensors where one belongs.")
    renamed = rename(_strip(arrays), RULES, torch_leaf, name)
    return {path: torch_to_keras(array) for path, array in renamed.items()}
