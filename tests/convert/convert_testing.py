"""What the conversion tests share: diffusers' UNet2DModel as the independent implementation, the
published configurations, and the other formats' files written from a diffusers model by this
module's own renaming (a mapping of its own, independent of keras_ddpm.convert's)."""

import atexit
import importlib.util
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

from keras_ddpm.convert.diffusers import PUBLISHED_UNETS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# google/ddpm-cifar10-32's config.json (35.7M parameters, the real one).
CIFAR10 = PUBLISHED_UNETS["google/ddpm-cifar10-32"]
# google/ddpm-celebahq-256's layout (six levels, multipliers 1, 1, 2, 2, 4, 4, attention at
# 16x16, 32 groups) with 32 base channels instead of 128.
SIX_LEVELS_256 = dict(
    PUBLISHED_UNETS["google/ddpm-celebahq-256"], block_out_channels=(32, 32, 64, 64, 128, 128)
)
# A 32x32 model with DDPM's groups (32) and small channels, for the formats that fix 32 groups.
SMALL_32 = dict(CIFAR10, block_out_channels=(32, 64, 64, 64), layers_per_block=1)
DDPM_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    clip_sample=True,
)


def import_diffusers():
    """diffusers, importable beside the CPU torch where torchvision's CUDA wheel is installed
    too (see fid_testing.import_torchvision)."""
    if importlib.util.find_spec("torchvision") is not None:
        from fid_testing import import_torchvision

        import_torchvision()
    import diffusers

    return diffusers


def diffusers_unet(config, seed=0):
    """A UNet2DModel with PyTorch's default initialisation, seeded, and every norm's scale and
    offset perturbed (their initial 1 and 0 would hide a norm put in another's place)."""
    diffusers = import_diffusers()
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "norm" in name:
                parameter.add_(0.2 * torch.randn_like(parameter))
    return unet


def save_diffusers(folder, config, seed=0, **scheduler):
    """`diffusers_unet(config, seed)` saved with save_pretrained, a DDPMScheduler config beside
    it; returns the model."""
    diffusers = import_diffusers()
    unet = diffusers_unet(config, seed)
    unet.save_pretrained(folder)
    diffusers.DDPMScheduler(**{**DDPM_SCHEDULER, **scheduler}).save_pretrained(folder)
    return unet


_SAVED = {}


def saved(name, config, seed, **scheduler):
    """`save_diffusers` into a folder of this session's, once per session whichever module asks
    (a fixture imported into several modules is one fixture per module)."""
    if name not in _SAVED:
        folder = tempfile.mkdtemp(prefix=f"keras_ddpm_{name}_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _SAVED[name] = (folder, save_diffusers(folder, config, seed, **scheduler))
    return _SAVED[name]


# Fixtures (imported by the test modules: a conftest.py here would shadow tests/conftest.py).


@pytest.fixture(scope="session")
def cifar10():
    """(folder, UNet2DModel): google/ddpm-cifar10-32's configuration, random weights, saved with
    save_pretrained beside its DDPMScheduler config (fixed-large variance, as the Hub's)."""
    return saved("ddpm-cifar10-32", CIFAR10, 0, variance_type="fixed_large")


@pytest.fixture(scope="session")
def six_levels():
    """(folder, UNet2DModel): the 256x256 six-level layout, attention at 16x16, small channels;
    fixed-small variance, as google/ddpm-celebahq-256's."""
    return saved("ddpm-256", SIX_LEVELS_256, 1, variance_type="fixed_small")


@pytest.fixture(scope="session")
def small32():
    """(folder, UNet2DModel): 32x32 with 32 groups (the DDPM code's) and small channels, saved
    with a clipping fixed-large DDPMScheduler config: quick to convert and to sample."""
    return saved("small32", SMALL_32, 2, variance_type="fixed_large")


@pytest.fixture(scope="session")
def small_unet(small32):
    """The weights the DDIM-code and TensorFlow tests write in those formats."""
    return small32[1]


def reference_output(unet, x, t):
    """The network's output for NHWC `x` and timesteps `t`, NHWC numpy."""
    with torch.no_grad():
        out = unet(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t).long())
    return out.sample.permute(0, 2, 3, 1).numpy()


def inputs(image_size, batch=3, channels=3, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, image_size, image_size, channels)).astype(np.float32)
    t = np.array([0, 417, 999][:batch], np.int32)
    return x, t


def keras_output(model, x, t, ema=True):
    """The EMA (sampling) network's output, or the trained network's, called eagerly: a one-off
    `predict` would trace the network on TensorFlow and compile it whole on JAX, whose eager
    operations compile once a shape, shared by the tests' models."""
    import keras

    network = model.ema_network if ema else model.network
    return keras.ops.convert_to_numpy(network([x, t], training=False))


# The DDPM authors' names (TensorFlow: "down_1/attn_0/q", the DDIM code: "down.1.attn.0.q")
# for each diffusers module, given the number of levels.


def _authors_modules(unet):
    """{diffusers module: (kind, the authors' path parts)} for every module with weights."""
    levels = len(unet.config.block_out_channels)
    modules = {
        "time_embedding.linear_1": ("dense", ["temb", "dense0"]),
        "time_embedding.linear_2": ("dense", ["temb", "dense1"]),
        "conv_in": ("conv", ["conv_in"]),
        "conv_norm_out": ("norm", ["norm_out"]),
        "conv_out": ("conv", ["conv_out"]),
    }
    res = {
        "norm1": ("norm", "norm1"),
        "conv1": ("conv", "conv1"),
        "time_emb_proj": ("dense", "temb_proj"),
        "norm2": ("norm", "norm2"),
        "conv2": ("conv", "conv2"),
        "conv_shortcut": ("nin", "nin_shortcut"),
    }
    attn = {
        "group_norm": ("norm", "norm"),
        "to_q": ("nin", "q"),
        "to_k": ("nin", "k"),
        "to_v": ("nin", "v"),
        "to_out.0": ("nin", "proj_out"),
    }
    for name, _ in unet.named_parameters():
        parts = name.rsplit(".", 1)[0].split(".")
        if parts[0] in ("down_blocks", "up_blocks"):
            side = parts[0].split("_")[0]
            level = int(parts[1]) if side == "down" else levels - 1 - int(parts[1])
            kind, index = parts[2], parts[3]
            if kind in ("downsamplers", "upsamplers"):
                sample = "downsample" if side == "down" else "upsample"
                modules[".".join(parts)] = ("conv", [f"{side}_{level}", sample, "conv"])
            elif kind == "resnets":
                what, ours = res[parts[4]]
                modules[".".join(parts)] = (what, [f"{side}_{level}", f"block_{index}", ours])
            else:
                what, ours = attn[".".join(parts[4:])]
                modules[".".join(parts)] = (what, [f"{side}_{level}", f"attn_{index}", ours])
        elif parts[0] == "mid_block":
            if parts[1] == "resnets":
                what, ours = res[parts[3]]
                modules[".".join(parts)] = (what, ["mid", f"block_{int(parts[2]) + 1}", ours])
            else:
                what, ours = attn[".".join(parts[3:])]
                modules[".".join(parts)] = (what, ["mid", "attn_1", ours])
    return modules


def _ddim_name(parts):
    """The DDIM code's module name of the authors' path parts: temb.dense.0, down.1.block.0.norm1,
    down.1.attn.0.q, down.0.downsample.conv, mid.block_1.conv1, mid.attn_1.q, norm_out."""
    if parts[0] == "temb":
        return f"temb.dense.{parts[1][-1]}"
    if parts[0].startswith(("down_", "up_")):
        side, level = parts[0].split("_")
        rest = [p.replace("_", ".") if p.startswith(("block_", "attn_")) else p for p in parts[1:]]
        return ".".join([side, level, *rest])
    return ".".join(parts)


def ddim_state_dict(unet, scale=1.0, prefix=""):
    """The DDIM code's state dict (models/diffusion.py's names, q/k/v/proj_out as 1x1
    convolutions) of the diffusers model's weights times `scale`, keys prefixed by `prefix`."""
    modules = _authors_modules(unet)
    state = {}
    for name, parameter in unet.state_dict().items():
        module, leaf = name.rsplit(".", 1)
        kind, parts = modules[module]
        value = parameter.detach().clone() * scale
        if kind == "nin" and leaf == "weight" and value.ndim == 2:
            value = value[:, :, None, None]
        state[f"{prefix}{_ddim_name(parts)}.{leaf}"] = value
    return state


def write_tf_checkpoint(prefix, unet, ema_scale=None):
    """The DDPM authors' TensorFlow checkpoint (scope "model", W/b and gamma/beta, TF layouts)
    of the diffusers model's weights, with `<name>/ExponentialMovingAverage` copies times
    `ema_scale` when given and an Adam slot per variable (left out by readers)."""
    import tensorflow as tf

    modules = _authors_modules(unet)
    names, tensors = [], []
    for name, parameter in unet.state_dict().items():
        module, leaf = name.rsplit(".", 1)
        kind, parts = modules[module]
        value = parameter.detach().numpy()
        if kind == "norm":
            leaf = {"weight": "gamma", "bias": "beta"}[leaf]
        else:
            leaf = {"weight": "W", "bias": "b"}[leaf]
            if value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value[:, :, 0, 0]
            value = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value.T
        variable = "/".join(["model", *parts, leaf])
        names += [variable, f"{variable}/Adam"]
        tensors += [value, np.zeros_like(value)]
        if ema_scale is not None:
            names.append(f"{variable}/ExponentialMovingAverage")
            tensors.append(value * ema_scale)
    names.append("global_step")
    tensors.append(np.array(790000, np.int64))
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(np.ascontiguousarray(t)) for t in tensors],
    )
    return prefix
