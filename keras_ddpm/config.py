"""Frozen configuration dataclasses and the named presets.

Config flows one way: CLI options -> these dataclasses -> constructors. Each
paper preset reproduces the architecture and training hyper-parameters of its
paper (see the docstrings of the presets below and ../shared/REFERENCE.md).
"""

import dataclasses
import math
import numbers
from dataclasses import dataclass

from keras_ddpm.sampling_options import VARIANCES

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "x0", "v")
# How imported checkpoints differ from the DDPM authors' UNet (`keras_ddpm.convert`); the first of
# each is DDPM's. See `layers.SinusoidalEmbedding` and `layers.Downsample`.
TIMESTEP_EMBEDDINGS = ("sin_cos", "interleaved")
DOWNSAMPLE_PADDINGS = ("same", "symmetric")
OPTIMIZERS = ("adam", "adamw")
# How the PyTorch backend runs a training step on CUDA: "auto" captures it as one CUDA graph
# there, "on" also says why not elsewhere, "off" keeps the eager step.
CUDA_GRAPH_CHOICES = ("auto", "on", "off")
LR_SCHEDULES = ("constant", "cosine")

# Bounds on what a config (a preset, a run's config.json, a `.keras` file) may ask to build,
# checked before anything is built. Each is generous: several times the largest paper preset's
# (ddpm_256: 256x256, 128 channels, multipliers up to 4, 6 levels, 2 blocks, 114M parameters)
# and above larger published models' (T = 4000 in improved-diffusion, ImageNet's 1,000 classes,
# a few hundred million parameters), so they refuse only configs no one means, such as a
# few-kilobyte file that asks for gigabytes.
MAX_IMAGE_SIZE = 1024
MAX_BASE_CHANNELS = 1024
MAX_CHANNEL_MULTIPLIER = 16
MAX_LEVELS = 8
MAX_RES_BLOCKS = 16
MAX_CLASSES = 100_000
MAX_TIMESTEPS = 10_000
MAX_PARAMETERS = 1_000_000_000  # 4 GB of float32 weights in each of the trained and EMA networks
# `train` warns when a run is shorter than this many EMA horizons (`TrainConfig.short_run_warning`).
SHORT_RUN_EMA_HORIZONS = 3


def _is_whole(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_whole(name, value, low, high):
    if not (_is_whole(value) and low <= value <= high):
        raise ValueError(
            f"{name} must be a whole number from {low:,} to {high:,}. Received: {name}={value!r}"
        )


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the DDPM UNet (Ho et al. 2020, appendix B)."""

    image_size: int = 32
    image_channels: int = 3
    base_channels: int = 128
    channel_multipliers: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (16,)
    dropout: float = 0.1
    num_groups: int = 32
    num_classes: int = 0  # 0: unconditional; K: labels 0..K-1 plus a null label K
    # Imported checkpoints only (`keras_ddpm.convert`); the defaults are DDPM's.
    timestep_embedding: str = "sin_cos"  # or "interleaved" (w86763777/pytorch-ddpm)
    downsample_padding: str = "same"  # TensorFlow's; or "symmetric" (PyTorch's padding=1)
    norm_epsilon: float = 1e-6  # GroupNorm epsilon (tf.contrib's; PyTorch's default is 1e-5)

    def __post_init__(self):
        object.__setattr__(self, "channel_multipliers", tuple(self.channel_multipliers))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        if self.timestep_embedding not in TIMESTEP_EMBEDDINGS:
            raise ValueError(
                f"timestep_embedding must be one of {TIMESTEP_EMBEDDINGS}. "
                f"Received: timestep_embedding={self.timestep_embedding!r}"
            )
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(
                f"downsample_padding must be one of {DOWNSAMPLE_PADDINGS}. "
                f"Received: downsample_padding={self.downsample_padding!r}"
            )
        if not (isinstance(self.norm_epsilon, float) and 0.0 < self.norm_epsilon < 1.0):
            raise ValueError(
                "norm_epsilon must be a float in (0, 1). "
                f"Received: norm_epsilon={self.norm_epsilon!r}"
            )
        if self.image_channels not in (1, 3):
            raise ValueError(
                f"image_channels must be 1 or 3. Received: image_channels={self.image_channels}"
            )
        if not 1 <= len(self.channel_multipliers) <= MAX_LEVELS:
            raise ValueError(
                f"channel_multipliers must name 1 to {MAX_LEVELS} levels. "
                f"Received: channel_multipliers={self.channel_multipliers}"
            )
        _check_whole("image_size", self.image_size, 1, MAX_IMAGE_SIZE)
        _check_whole("base_channels", self.base_channels, 1, MAX_BASE_CHANNELS)
        if not all(
            _is_whole(mult) and 1 <= mult <= MAX_CHANNEL_MULTIPLIER
            for mult in self.channel_multipliers
        ):
            raise ValueError(
                f"channel_multipliers must be whole numbers from 1 to {MAX_CHANNEL_MULTIPLIER}. "
                f"Received: channel_multipliers={self.channel_multipliers}"
            )
        _check_whole("num_res_blocks", self.num_res_blocks, 1, MAX_RES_BLOCKS)
        _check_whole("num_groups", self.num_groups, 1, self.base_channels)
        _check_whole("num_classes", self.num_classes, 0, MAX_CLASSES)
        downsampling = 2 ** (len(self.channel_multipliers) - 1)
        if self.image_size < downsampling or self.image_size % downsampling:
            raise ValueError(
                f"image_size must be divisible by 2**(levels - 1) = {downsampling}. "
                f"Received: image_size={self.image_size}"
            )
        for channels in (
            self.base_channels,
            *(self.base_channels * mult for mult in self.channel_multipliers),
        ):
            if channels % self.num_groups:
                raise ValueError(
                    f"Every level's channels must be divisible by num_groups. "
                    f"Received: num_groups={self.num_groups}, channels={channels}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={self.dropout}")
        parameters = self.parameter_count()
        if parameters > MAX_PARAMETERS:
            raise ValueError(
                f"The UNet would have {parameters:,} parameters, more than the limit of "
                f"{MAX_PARAMETERS:,}. "
                f"Received: base_channels={self.base_channels}, "
                f"channel_multipliers={self.channel_multipliers}, "
                f"num_res_blocks={self.num_res_blocks}, num_classes={self.num_classes}"
            )

    @property
    def resolutions(self):
        """The feature-map size at each level, e.g. (32, 16, 8, 4)."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_multipliers)))

    def parameter_count(self):
        """The parameters `build_unet(self)` creates, counted from the config alone (nothing is
        built): its layers in its order, a k x k convolution k*k*in*out + out, a dense layer
        in*out + out, a group norm 2 per channel."""
        ch, temb = self.base_channels, 4 * self.base_channels

        def conv(c_in, c_out, kernel=3):
            return kernel * kernel * c_in * c_out + c_out

        def res_block(c_in, c_out):  # norm1, conv1, temb_proj, norm2, conv2 (+ nin_shortcut)
            shortcut = conv(c_in, c_out, 1) if c_in != c_out else 0
            return (
                2 * c_in
                + conv(c_in, c_out)
                + conv(temb, c_out, 1)
                + 2 * c_out
                + conv(c_out, c_out)
                + shortcut
            )

        def attention(c):  # norm, q, k, v, proj_out
            return 2 * c + 4 * conv(c, c, 1)

        total = conv(ch, temb, 1) + conv(temb, temb, 1) + conv(self.image_channels, ch)
        total += (self.num_classes + 1) * temb if self.num_classes else 0
        channels, skips, last = ch, [ch], len(self.channel_multipliers) - 1
        for level, (mult, size) in enumerate(zip(self.channel_multipliers, self.resolutions)):
            for _ in range(self.num_res_blocks):
                total += res_block(channels, ch * mult) + (
                    attention(ch * mult) if size in self.attention_resolutions else 0
                )
                channels = ch * mult
                skips.append(channels)
            if level != last:
                total += conv(channels, channels)  # Downsample
                skips.append(channels)
        total += 2 * res_block(channels, channels) + attention(channels)  # the middle
        for level in reversed(range(last + 1)):
            mult, size = self.channel_multipliers[level], self.resolutions[level]
            for _ in range(self.num_res_blocks + 1):
                total += res_block(channels + skips.pop(), ch * mult)
                total += attention(ch * mult) if size in self.attention_resolutions else 0
                channels = ch * mult
            if level != 0:
                total += conv(channels, channels)  # Upsample
        return total + 2 * channels + conv(channels, self.image_channels)  # norm_out, conv_out


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and the training objective."""

    timesteps: int = 1000
    schedule: str = "linear"  # DDPM: linear betas 1e-4 .. 0.02
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: str = "epsilon"  # the network's target: epsilon, x0 or v
    # Min-SNR-gamma loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    # Weighting Strategy"; diffusers' `--snr_gamma`): each example's squared error weighted by
    # min(SNR(t), gamma) / SNR(t) for epsilon, min(SNR(t), gamma) for x0 and
    # min(SNR(t), gamma) / (SNR(t) + 1) for v, SNR(t) = alpha-bar_t / (1 - alpha-bar_t): a loss in
    # x0 terms clipped at gamma, which lowers the weight of the nearly noiseless steps. The paper
    # uses gamma = 5. 0: DDPM's unweighted L_simple.
    snr_gamma: float = 0.0
    class_dropout: float = 0.1  # label dropped to the null class (classifier-free guidance)
    # How the model samples unless told otherwise (`SampleRequest.resolve`): DDPM's sigma_t^2 and
    # clipping of the predicted x_0 to [-1, 1]. Imported checkpoints carry their authors' settings.
    variance: str = "fixed_small"
    clip_denoised: bool = True

    def __post_init__(self):
        if self.variance not in VARIANCES:
            raise ValueError(
                f"variance must be one of {VARIANCES}. Received: variance={self.variance!r}"
            )
        if not isinstance(self.clip_denoised, bool):
            raise ValueError(
                "clip_denoised must be True or False. "
                f"Received: clip_denoised={self.clip_denoised!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule must be one of {SCHEDULES}. Received: schedule={self.schedule!r}"
            )
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"prediction must be one of {PREDICTIONS}. Received: prediction={self.prediction!r}"
            )
        _check_whole("timesteps", self.timesteps, 2, MAX_TIMESTEPS)
        number = isinstance(self.snr_gamma, numbers.Real) and not isinstance(self.snr_gamma, bool)
        if not (number and 0.0 <= self.snr_gamma < math.inf):
            raise ValueError(
                f"snr_gamma must be a number >= 0 (0: off). Received: snr_gamma={self.snr_gamma!r}"
            )
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(
                f"class_dropout must be in [0, 1). Received: class_dropout={self.class_dropout}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation hyper-parameters (the paper's, for the paper presets)."""

    learning_rate: float = 2e-4
    warmup_steps: int = 5000
    batch_size: int = 128
    ema_decay: float = 0.9999
    grad_clip: float = 1.0  # global-norm clipping; 0 disables
    train_steps: int = 800_000
    horizontal_flip: bool = True
    optimizer: str = "adam"  # adam, or adamw (decoupled weight decay)
    weight_decay: float = 0.0  # adamw only
    # after warm-up: constant (DDPM) or cosine decay to 0 at train_steps
    lr_schedule: str = "constant"
    # 0: fixed decay; else decay_n = min(ema_decay, 1 - (1 + n)^-power)
    ema_warmup_power: float = 0.0
    # Micro-batches a step: each optimizer and EMA step averages the gradients of grad_accum
    # slices of batch_size / grad_accum examples, computed one after another (less memory, the
    # same update as one batch of batch_size).
    grad_accum: int = 1
    # PyTorch on CUDA: the training step captured as one CUDA graph (CUDA_GRAPH_CHOICES); it
    # computes the same numbers as the eager step.
    cuda_graph: str = "auto"

    def __post_init__(self):
        if self.cuda_graph not in CUDA_GRAPH_CHOICES:
            raise ValueError(
                f"cuda_graph must be one of {CUDA_GRAPH_CHOICES}. Received: "
                f"cuda_graph={self.cuda_graph!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {OPTIMIZERS}. Received: optimizer={self.optimizer!r}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {LR_SCHEDULES}. Received: "
                f"lr_schedule={self.lr_schedule!r}"
            )
        if self.weight_decay < 0 or (self.weight_decay and self.optimizer != "adamw"):
            raise ValueError(
                "weight_decay must be >= 0 and needs optimizer='adamw'. Received: "
                f"weight_decay={self.weight_decay}"
            )
        if self.ema_warmup_power < 0:
            raise ValueError(
                f"ema_warmup_power must be >= 0. Received: ema_warmup_power={self.ema_warmup_power}"
            )
        if self.grad_clip < 0:
            raise ValueError(
                f"grad_clip must be >= 0 (0 disables). Received: grad_clip={self.grad_clip}"
            )
        if self.warmup_steps < 0 or self.train_steps < 1:
            raise ValueError(
                "warmup_steps must be >= 0 and train_steps >= 1. Received: "
                f"warmup_steps={self.warmup_steps}, train_steps={self.train_steps}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1). Received: ema_decay={self.ema_decay}")
        if self.learning_rate <= 0:
            raise ValueError(
                f"learning_rate must be positive. Received: learning_rate={self.learning_rate}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive. Received: batch_size={self.batch_size}")
        _check_whole("grad_accum", self.grad_accum, 1, self.batch_size)
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"The batch size {self.batch_size} does not split into {self.grad_accum} equal "
                "micro-batches (--grad-accum); pick a divisor of it."
            )

    def ema_horizon(self, steps=None):
        """About how many of the latest steps' weights the EMA averages after `steps` updates
        (default `train_steps`): 1 / (1 - decay) with the decay of the last update, warmed up
        (`DiffusionModel.ema_decay_at`) or not."""
        steps = self.train_steps if steps is None else steps
        decay = self.ema_decay
        if self.ema_warmup_power:
            decay = min(decay, 1.0 - steps**-self.ema_warmup_power)
        return 1.0 / (1.0 - decay)

    def short_run_warning(self):
        """One sentence when `train_steps` is shorter than the learning-rate warm-up or than
        `SHORT_RUN_EMA_HORIZONS` EMA horizons (without EMA warm-up, the untrained initial
        weights then keep more than e^-3 = 5% of the EMA weights); None otherwise."""
        steps, problems, advice = self.train_steps, [], []
        if steps < self.warmup_steps:
            problems.append(
                f"the learning-rate warm-up ({self.warmup_steps:,} steps: the rate never peaks)"
            )
            advice.append("lower --warmup-steps")
        horizon = self.ema_horizon()
        if steps < SHORT_RUN_EMA_HORIZONS * horizon:
            power = self.ema_warmup_power
            warmed = f" and --ema-warmup-power {power:g}" if power else ""
            problems.append(
                f"{SHORT_RUN_EMA_HORIZONS} EMA horizons ({SHORT_RUN_EMA_HORIZONS} x "
                f"{horizon:,.0f} steps at --ema-decay {self.ema_decay:g}{warmed}), so samples "
                "from the EMA weights will look like noise"
            )
            lower = (
                "a lower --ema-warmup-power or --ema-decay"
                if power
                else "a lower --ema-decay or --ema-warmup-power 0.75"
            )
            advice.append(f"pass {lower}, or sample the trained weights with `sample --no-ema`")
        if not problems:
            return None
        problems, advice = " and than ".join(problems), "; ".join(advice)
        return f"--steps {steps:,} is shorter than {problems}; {advice}."


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    unet: UNetConfig
    diffusion: DiffusionConfig
    train: TrainConfig
    source: str = ""  # where imported weights came from (`keras_ddpm.convert`); "" if trained here

    def replace(self, **overrides):
        """Returns a copy with fields of any of the three parts overridden by name."""
        parts = {"unet": {}, "diffusion": {}, "train": {}}
        for key, value in overrides.items():
            for part in parts:
                if key in {f.name for f in dataclasses.fields(getattr(self, part))}:
                    parts[part][key] = value
                    break
            else:
                raise ValueError(f"Unknown configuration field. Received: {key}={value!r}")
        return dataclasses.replace(
            self,
            **{part: dataclasses.replace(getattr(self, part), **kw) for part, kw in parts.items()},
        )

    def to_dict(self):
        return dataclasses.asdict(self)


PRESETS = {
    preset.name: preset
    for preset in (
        Preset(
            name="tiny",
            description="A few-second-per-step model for tests (16x16, grayscale).",
            unet=UNetConfig(
                image_size=16,
                image_channels=1,
                base_channels=16,
                channel_multipliers=(1, 2),
                num_res_blocks=1,
                attention_resolutions=(8,),
                dropout=0.0,
                num_groups=4,
            ),
            diffusion=DiffusionConfig(timesteps=100, beta_start=1e-3, beta_end=0.2),
            train=TrainConfig(
                learning_rate=1e-3,
                warmup_steps=0,
                batch_size=16,
                ema_decay=0.9,
                grad_clip=1.0,
                train_steps=100,
                horizontal_flip=False,
            ),
        ),
        Preset(
            name="mnist",
            description="A small model for 28x28 digits padded to 32x32, trainable on a CPU.",
            unet=UNetConfig(
                image_size=32,
                image_channels=1,
                base_channels=32,
                channel_multipliers=(1, 2, 2),
                num_res_blocks=1,
                attention_resolutions=(8,),
                dropout=0.1,
                num_groups=8,
            ),
            diffusion=DiffusionConfig(),
            train=TrainConfig(
                learning_rate=5e-4,
                warmup_steps=500,
                batch_size=64,
                ema_decay=0.999,
                grad_clip=1.0,
                train_steps=20_000,
                horizontal_flip=False,
            ),
        ),
        Preset(
            name="ddpm_cifar10",
            description="DDPM's CIFAR-10 32x32 model (Ho et al. 2020): 35.7M parameters.",
            unet=UNetConfig(),
            diffusion=DiffusionConfig(),
            train=TrainConfig(),
        ),
        Preset(
            name="ddim_celeba64",
            description="DDIM's CelebA 64x64 model (Song et al. 2020).",
            unet=UNetConfig(image_size=64, channel_multipliers=(1, 2, 2, 2, 4)),
            diffusion=DiffusionConfig(),
            train=TrainConfig(),
        ),
        Preset(
            name="ddpm_256",
            description=(
                "DDPM's 256x256 model for CelebA-HQ and LSUN (Ho et al. 2020): 114M parameters."
            ),
            unet=UNetConfig(image_size=256, channel_multipliers=(1, 1, 2, 2, 4, 4), dropout=0.0),
            diffusion=DiffusionConfig(),
            train=TrainConfig(learning_rate=2e-5, batch_size=64),
        ),
        Preset(
            name="mnist_quick",
            description=(
                "The mnist UNet at half the width on 28x28 digits with Min-SNR-5 weighting, for "
                "a 2,500-step CPU run (about 15 minutes on 2 cores; docs/training.md)."
            ),
            unet=UNetConfig(
                image_size=28,
                image_channels=1,
                base_channels=16,
                channel_multipliers=(1, 2, 2),
                num_res_blocks=1,
                attention_resolutions=(),
                dropout=0.0,
                num_groups=4,
            ),
            diffusion=DiffusionConfig(snr_gamma=5.0),
            train=TrainConfig(
                learning_rate=2e-3,
                warmup_steps=100,
                batch_size=32,
                ema_decay=0.995,
                ema_warmup_power=0.75,
                grad_clip=1.0,
                train_steps=2500,
                horizontal_flip=False,
                lr_schedule="cosine",
            ),
        ),
    )
}


def get_preset(name):
    """Returns the named `Preset` (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


def preset_from_dict(config):
    """Inverse of `Preset.to_dict`."""
    return Preset(
        name=config["name"],
        description=config.get("description", ""),
        unet=UNetConfig(**config["unet"]),
        diffusion=DiffusionConfig(**config["diffusion"]),
        train=TrainConfig(**config["train"]),
        source=config.get("source", ""),
    )
