"""The DDPM authors' TensorFlow checkpoints (hojonathanho/diffusion: `model.ckpt-790000` with
its `.index` and `.data-*` files), read with `tf.train.load_checkpoint` under every Keras backend.

The network lives in the variable scope `model` (diffusion_tf/models/unet.py): `temb/dense0/W`,
`conv_in/W`, `down_0/block_0/norm1/gamma`, `down_1/attn_0/q/W`, `down_0/downsample/conv/W`,
`mid/block_1`, `mid/attn_1`, `up_3/upsample/conv/W`, `norm_out`, `conv_out`; convolutions are
already (kh, kw, in, out) and dense and 1x1 ("nin") kernels (in, out), Keras' layouts. The EMA
copy of each variable is `<name>/ExponentialMovingAverage` (tf.train.ExponentialMovingAverage);
Adam's slots are left out.
"""

import dataclasses
import glob
import os
import re

from keras_ddpm.convert.checkpoint import Checkpoint
from keras_ddpm.convert.checkpoint import authors_variance
from keras_ddpm.convert.checkpoint import ddpm_settings
from keras_ddpm.convert.checkpoint import infer_unet_config
from keras_ddpm.convert.checkpoint import rename

FORMAT = "the DDPM authors' TensorFlow checkpoint"
SCOPE = "model/"
EMA_SUFFIX = "/ExponentialMovingAverage"
LEAVES = {"W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta"}
RULES = (
    (r"^temb/dense(\d)/(\w+)$", r"temb_dense\1/\2"),
    (r"^(conv_in|norm_out|conv_out)/(\w+)$", r"\1/\2"),
    (r"^(down|up)_(\d+)/block_(\d+)/(\w+)/(\w+)$", r"\1\2_block\3/\4/\5"),
    (r"^(down|up)_(\d+)/attn_(\d+)/(\w+)/(\w+)$", r"\1\2_attn\3/\4/\5"),
    (r"^down_(\d+)/downsample/conv/(\w+)$", r"down\1_downsample/conv/\2"),
    (r"^up_(\d+)/upsample/conv/(\w+)$", r"up\1_upsample/conv/\2"),
    (r"^mid/block_(\d)/(\w+)/(\w+)$", r"mid_block\1/\2/\3"),
    (r"^mid/attn_1/(\w+)/(\w+)$", r"mid_attn/\1/\2"),
)
_DATA_FILE = re.compile(r"^(.*)\.data-\d{5}-of-\d{5}$")
_STEP = re.compile(r"-(\d+)$")


def find_prefix(source):
    """The checkpoint prefix `source` names (the prefix, its `.index` or a data file, or a folder
    of checkpoints: the one with the highest step), or None."""
    if os.path.isdir(source):
        prefixes = [path[: -len(".index")] for path in glob.glob(os.path.join(source, "*.index"))]

        def step(prefix):
            match = _STEP.search(prefix)
            return int(match.group(1)) if match else -1

        return max(prefixes, key=step) if prefixes else None
    if source.endswith(".index") and os.path.isfile(source):
        return source[: -len(".index")]
    match = _DATA_FILE.match(source)
    if match and os.path.isfile(match.group(1) + ".index"):
        return match.group(1)
    if os.path.isfile(source + ".index"):
        return source
    return None


def input_files(prefix):
    """The files a checkpoint is read from (its index and data shards)."""
    return sorted([f"{prefix}.index", *glob.glob(f"{prefix}.data-*")])


def read(prefix, image_size=None):
    """A `Checkpoint` of the TensorFlow checkpoint at `prefix` (`find_prefix`)."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ValueError(
            "Reading a TensorFlow checkpoint needs TensorFlow: pip install tensorflow."
        ) from None
    name = os.path.basename(prefix)
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
        raw = [n for n in names if n.startswith(SCOPE) and n.rpartition("/")[2] in LEAVES]
        tensors = {n[len(SCOPE) :]: reader.get_tensor(n) for n in raw}
        has_ema = bool(raw) and all(n + EMA_SUFFIX in names for n in raw)
        ema = {n[len(SCOPE) :]: reader.get_tensor(n + EMA_SUFFIX) for n in raw} if has_ema else None
    except (tf.errors.OpError, IndexError) as error:  # IndexError: a data file cut short
        reason = (getattr(error, "message", None) or str(error) or type(error).__name__).strip()
        raise ValueError(
            f"{name} is not a complete TensorFlow checkpoint ({reason.splitlines()[0]}); download "
            "it again, with its .index and .data files side by side."
        ) from None
    if not raw:
        raise ValueError(
            f"{name} holds no variables under '{SCOPE}'; it is not one of the DDPM authors' "
            "checkpoints."
        )
    weights = _weights(tensors, name)
    ema_weights = None if ema is None else _weights(ema, name)
    unet = infer_unet_config(weights, name, image_size, num_groups=32, norm_epsilon=1e-6)
    # The authors trained CIFAR-10 (32x32) with dropout 0.1, the 256x256 models without.
    unet = dataclasses.replace(unet, dropout=0.1 if unet.image_size <= 64 else 0.0)
    return Checkpoint(
        unet=unet,
        diffusion=ddpm_settings(authors_variance(unet.image_size), clip_denoised=True),
        weights=weights,
        ema_weights=ema_weights,
        source=f"{name} ({FORMAT}{', with EMA' if ema is not None else ''})",
        name=name,
    )


def _weights(tensors, name):
    renamed = rename(tensors, RULES, lambda path, leaf: LEAVES[leaf], name)
    return {path: array.astype("float32") for path, array in renamed.items()}
