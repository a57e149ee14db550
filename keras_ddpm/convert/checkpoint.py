"""What every reader returns (`Checkpoint`), the UNet its weights describe, and the model built
from it.

Each reader (`diffusers`, `ddim`, `tf_checkpoint`, `pytorch_ddpm`) renames its file's tensors to
the weight paths of `build_unet` ("down0_block0/conv1/kernel", "mid_attn/q/bias") in Keras'
layouts. `infer_unet_config` reads the architecture from those names and shapes, and `to_model`
puts them into a `DiffusionModel`, refusing any weight that has no place in it or any place
left without a weight.
"""

import dataclasses
import re

import numpy as np

from keras_ddpm.config import DiffusionConfig
from keras_ddpm.config import Preset
from keras_ddpm.config import TrainConfig
from keras_ddpm.config import UNetConfig
from keras_ddpm.config import get_preset
from keras_ddpm.saving import CONVERTED_WEIGHTS

WEIGHTS = CONVERTED_WEIGHTS
ATTENTION_RESOLUTION = 16  # DDPM's, DDIM's and every published DDPM-family model's


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read into keras_ddpm's terms.

    weights: {weight path: float32 array} of the trained network, or the file's only set.
    ema_weights: the exponential moving average, where the file holds both (else None).
    source: where the weights came from, in words (stored in the model; `info` shows it).
    """

    unet: UNetConfig
    diffusion: DiffusionConfig
    weights: dict
    ema_weights: dict = None
    source: str = ""
    name: str = "imported"


def rename(tensors, rules, leaf_names, what):
    """{our weight path: array} from a file's {name: array}, by `rules`: (pattern, replacement)
    pairs of `re.sub`, the first that matches a name renames its module path; `leaf_names` maps
    the last part ("weight", "W") given the renamed module path. A name no rule matches raises
    ValueError naming `what` (the format, for the sentence)."""
    renamed = {}
    for name, array in tensors.items():
        for pattern, replacement in rules:
            module, count = re.subn(pattern, replacement, name)
            if count:
                break
        else:
            raise ValueError(
                f"{what} holds a weight that a DDPM UNet has no place for ({name}); its "
                "architecture is not one keras_ddpm supports."
            )
        path, _, leaf = module.rpartition("/")
        renamed[f"{path}/{leaf_names(path, leaf)}"] = array
    return renamed


def torch_leaf(path, leaf):
    """PyTorch's parameter names as Keras': a norm's weight/bias are gamma/beta, any other
    layer's are kernel/bias."""
    is_norm = path.rpartition("/")[2].startswith("norm")
    return {"weight": "gamma" if is_norm else "kernel", "bias": "beta" if is_norm else "bias"}.get(
        leaf, leaf
    )


def infer_unet_config(weights, what, image_size=None, **settings):
    """The `UNetConfig` that `weights` (our paths) fit: channels, multipliers, blocks a level and
    the levels with attention come from the names and shapes; the image size from `image_size`,
    else from the first level with attention, taken to be 16x16 (DDPM's choice, and that of every
    model these formats publish). `settings`: the config fields the weights cannot tell
    (dropout, num_groups, norm_epsilon, ...)."""
    if "conv_in/kernel" not in weights:
        raise ValueError(f"{what} has no input convolution; it is not a DDPM UNet.")
    _, _, image_channels, base_channels = weights["conv_in/kernel"].shape
    levels = _count(weights, "down{}_block0/conv1/kernel")
    blocks = _count(weights, "down0_block{}/conv1/kernel")
    if not levels or not blocks:
        raise ValueError(f"{what} has no residual blocks; it is not a DDPM UNet.")
    multipliers = []
    for level in range(levels):
        channels = weights[f"down{level}_block0/conv1/kernel"].shape[-1]
        if channels % base_channels:
            raise ValueError(
                f"{what} has {channels} channels at level {level}, not a multiple of its "
                f"{base_channels} base channels; keras_ddpm's UNet cannot hold it."
            )
        multipliers.append(channels // base_channels)
    attention_levels = [i for i in range(levels) if f"down{i}_attn0/q/kernel" in weights]
    if image_size is None:
        if not attention_levels:
            raise ValueError(
                f"{what} does not record its image size and has no attention to tell it by; pass "
                "the size it was trained at (--image-size)."
            )
        image_size = ATTENTION_RESOLUTION * 2 ** attention_levels[0]
    return UNetConfig(
        image_size=int(image_size),
        image_channels=int(image_channels),
        base_channels=int(base_channels),
        channel_multipliers=tuple(multipliers),
        num_res_blocks=blocks,
        attention_resolutions=tuple(int(image_size) // 2**i for i in attention_levels),
        **settings,
    )


def ddpm_settings(variance, clip_denoised, timesteps=1000):
    """DDPM's forward process (T = 1000, linear betas 1e-4 .. 0.02, epsilon prediction), which
    every format but diffusers' implies, with the sampling settings its code used."""
    return DiffusionConfig(
        timesteps=timesteps,
        schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        prediction="epsilon",
        variance=variance,
        clip_denoised=clip_denoised,
    )


def authors_variance(image_size):
    """The DDPM authors' sigma_t^2: fixed-large for CIFAR-10 (32x32), fixed-small for CelebA-HQ
    and LSUN (256x256) (their run scripts; pesser/pytorch_diffusion's model_var_type_map)."""
    return "fixed_large" if image_size == 32 else "fixed_small"


def _count(weights, template):
    count = 0
    while template.format(count) in weights:
        count += 1
    return count


def to_model(checkpoint, weights="ema"):
    """A `DiffusionModel` holding the checkpoint's weights: the trained network gets the trained
    weights, the EMA network (which `generate` samples with) the EMA weights with
    `weights="ema"` or the trained ones with `weights="raw"`; a file with one set gives both
    networks that set."""
    from keras_ddpm.diffusion_model import DiffusionModel

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}. Received: weights={weights!r}")
    both = checkpoint.ema_weights is not None
    sampled = checkpoint.ema_weights if both and weights == "ema" else checkpoint.weights
    which = {True: f"{'EMA' if weights == 'ema' else 'raw'} weights", False: "its only weights"}
    train = get_preset("ddpm_256").train if checkpoint.unet.image_size >= 256 else TrainConfig()
    preset = Preset(
        name=checkpoint.name,
        description=f"Imported: {checkpoint.source}.",
        unet=checkpoint.unet,
        diffusion=checkpoint.diffusion,
        train=train,
        source=f"{checkpoint.source}; sampling with {which[both]}",
    )
    model = DiffusionModel(preset, kernel_initializer="zeros")  # every weight is set next
    _assign(model.network, checkpoint.weights, checkpoint.source)
    _assign(model.ema_network, sampled, checkpoint.source)
    return model


def _assign(network, weights, what):
    """Sets every weight of `network` from `weights` (by path), after checking that they match
    one to one, in name and in shape."""
    variables = {variable.path: variable for variable in network.weights}
    missing = sorted(set(variables) - set(weights))
    extra = sorted(set(weights) - set(variables))
    if missing or extra:
        parts = []
        if extra:
            parts.append(f"{len(extra)} weights with no place in it ({', '.join(extra[:3])})")
        if missing:
            parts.append(f"no weights for {len(missing)} of its ({', '.join(missing[:3])})")
        raise ValueError(
            f"{what} does not fit keras_ddpm's DDPM UNet: {'; '.join(parts)}; its architecture "
            "is not one keras_ddpm supports."
        )
    for path, variable in variables.items():
        value = weights[path]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"{what} does not fit keras_ddpm's DDPM UNet: {path} is "
                f"{tuple(value.shape)}, the UNet's {tuple(variable.shape)}."
            )
        variable.assign(np.asarray(value, dtype=np.float32))
