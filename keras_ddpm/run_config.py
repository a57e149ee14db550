"""The options of one training run (`python cli.py train`) as a frozen dataclass.

The model is a preset of `keras_ddpm.config` with this run's overrides applied
(`RunConfig.preset_config()`); the other options say where and how it trains.
`keras_ddpm.training.run(config)` trains it. This module imports no Keras, so the CLI reads the
defaults and limits of its options here without loading Keras.

    config = RunConfig(preset="tiny", steps=100, out_dir="runs/tiny")
    result = training.run(config)
"""

import dataclasses
import json
import math
import os

from keras_ddpm.config import CUDA_GRAPH_CHOICES
from keras_ddpm.config import LR_SCHEDULES
from keras_ddpm.config import OPTIMIZERS
from keras_ddpm.config import PREDICTIONS
from keras_ddpm.config import PRESETS
from keras_ddpm.config import SCHEDULES
from keras_ddpm.config import get_preset
from keras_ddpm.evaluation import FEATURES
from keras_ddpm.evaluation import RESIZES
from keras_ddpm.sampling_options import CROP_CHOICES

# --mixed-precision: Keras' dtype policy of each (`training.set_mixed_precision`).
MIXED_PRECISION_POLICIES = {"no": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
MIXED_PRECISIONS = tuple(MIXED_PRECISION_POLICIES)
# --distribute: the backend each needs, None for any (`backend.distribution_scope`); multi_worker
# runs on every backend, each with its own engine (docs/multi_worker.md).
DISTRIBUTION_BACKENDS = {
    "none": None,
    "mirrored": "tensorflow",
    "data_parallel": "jax",
    "multi_worker": None,
}
DISTRIBUTIONS = tuple(DISTRIBUTION_BACKENDS)
CONFIG_NAME = "config.json"  # the run's options and model configuration, in OUT


@dataclasses.dataclass(frozen=True)
class Limit:
    """The values one option takes: a type, with bounds (each open or closed) or choices.

    `None` is taken where the option's default is None ("the preset's", "not given").
    """

    kind: type  # int, float, str or bool
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = None

    def check(self, name, value, nullable):
        """`value` (an int given for a float made a float); ValueError if it is not allowed."""
        if value is None and nullable:
            return None
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise ValueError(f"{name} must be {self.describe()}. Received: {name}={value!r}")
        if self.kind is float and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number. Received: {name}={value!r}")
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        if too_low or too_high or (self.choices is not None and value not in self.choices):
            raise ValueError(f"{name} must be {self.describe()}. Received: {name}={value!r}")
        return value

    def describe(self):
        """What the option takes, in words: "one of ('adam', 'adamw')", "an int >= 1"."""
        if self.choices is not None:
            return f"one of {self.choices}"
        text = {int: "an int", float: "a number", str: "a string", bool: "true or false"}[self.kind]
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high}")
        return " ".join([text, " and ".join(bounds)]) if bounds else text


def _option(default, kind, low=None, high=None, choices=None, low_open=False, high_open=False):
    limit = Limit(kind, low, high, low_open, high_open, choices)
    return dataclasses.field(default=default, metadata={"limit": limit})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """`python cli.py train`'s options, by the same names (`--batch-size` is `batch_size`).

    `None` is the preset's value for the model's options (image size, steps, batch size,
    optimizer, ...), and automatic for `flip` (the preset's; off for digits) and `jit_compile`
    (`backend.default_jit_compile()`).
    """

    # The data.
    dataset: str = _option("mnist_5k", str)
    data_dir: str = _option(None, str)
    image_size: int = _option(None, int, low=1)
    crop: str = _option("auto", str, choices=CROP_CHOICES)
    flip: bool = _option(None, bool)
    cache: str = _option("auto", str)  # auto, memory, none, or a folder
    # The model and its optimizer: a preset and overrides of it.
    preset: str = _option("mnist", str, choices=tuple(PRESETS))
    steps: int = _option(None, int, low=1)
    batch_size: int = _option(None, int, low=1)
    optimizer: str = _option(None, str, choices=OPTIMIZERS)
    weight_decay: float = _option(None, float, low=0)
    lr: float = _option(None, float, low=0, low_open=True)
    lr_schedule: str = _option(None, str, choices=LR_SCHEDULES)
    warmup_steps: int = _option(None, int, low=0)
    grad_clip: float = _option(None, float, low=0)
    grad_accum: int = _option(None, int, low=1)
    ema_decay: float = _option(None, float, low=0, high=1, high_open=True)
    ema_warmup_power: float = _option(None, float, low=0)
    prediction: str = _option(None, str, choices=PREDICTIONS)
    snr_gamma: float = _option(None, float, low=0)
    schedule: str = _option(None, str, choices=SCHEDULES)
    class_cond: bool = _option(False, bool)
    # How it computes.
    mixed_precision: str = _option("no", str, choices=MIXED_PRECISIONS)
    jit_compile: bool = _option(None, bool)
    steps_per_execution: int = _option(1, int, low=1)
    cuda_graph: str = _option(None, str, choices=CUDA_GRAPH_CHOICES)
    distribute: str = _option("none", str, choices=DISTRIBUTIONS)
    seed: int = _option(0, int)
    # The run directory and what is written there.
    out_dir: str = _option("runs/default", str)
    resume: bool = _option(False, bool)
    checkpoint_every: int = _option(1000, int, low=1)
    keep_checkpoints: int = _option(3, int, low=1)
    log_every: int = _option(100, int, low=1)
    sample_every: int = _option(1000, int, low=0)  # 0: never
    sample_steps: int = _option(50, int, low=1)
    verbose: int = _option(1, int, low=0, high=2)
    fid_every: int = _option(0, int, low=0)  # 0: never
    fid_samples: int = _option(1000, int, low=2)
    fid_steps: int = _option(50, int, low=1)
    fid_features: str = _option("inception-2015", str, choices=FEATURES)
    fid_resize: str = _option("clean", str, choices=RESIZES)
    inception_weights: str = _option(None, str)  # None: the network's published weights

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = self.limit(field.name).check(
                field.name, getattr(self, field.name), nullable=field.default is None
            )
            object.__setattr__(self, field.name, value)

    @classmethod
    def limit(cls, name):
        """The `Limit` of option `name`."""
        return cls.__dataclass_fields__[name].metadata["limit"]

    def options(self):
        """The options as config.json stores them (all but `resume`), by name."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "resume"}

    def with_saved_options(self, explicit=None):
        """With `resume`: this config with the options of OUT/config.json (as `train` wrote them)
        in place of those not named in `explicit` (what the caller set; by default the options
        that differ from their defaults). Without `resume`: this config.

        Raises ValueError with one sentence when config.json is missing, not JSON, or holds an
        invalid option, so a run never continues with options it was not started with.
        """
        if not self.resume:
            return self
        if explicit is None:
            defaults = RunConfig()
            explicit = {f.name for f in dataclasses.fields(self)}
            explicit = {n for n in explicit if getattr(self, n) != getattr(defaults, n)}
        path = os.path.join(self.out_dir, CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"--resume needs {path}, which holds the options of the run to continue, and "
                "there is none; restore it, or start a new run without --resume."
            )
        try:
            with open(path) as f:
                saved = json.load(f)
        except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(
                f"{path} is not valid JSON ({error}), so the run cannot be resumed."
            ) from None
        if not isinstance(saved, dict) or not isinstance(saved.get("options"), dict):
            shape = type(saved.get("options") if isinstance(saved, dict) else saved).__name__
            raise ValueError(
                f'{path} must be a JSON object whose "options" is an object, as `train` writes '
                f"it. Received: {shape}"
            )
        updates = {}
        for key, value in saved["options"].items():
            if key not in self.__dataclass_fields__ or key == "resume" or key in explicit:
                continue
            nullable = self.__dataclass_fields__[key].default is None
            try:
                updates[key] = self.limit(key).check(key, value, nullable)
            except ValueError:
                raise ValueError(
                    f"{path} holds an invalid option {key}={value!r}, so the run cannot be "
                    "resumed; fix or remove it."
                ) from None
        return dataclasses.replace(self, **updates)

    def preset_config(self):
        """The preset with this run's overrides (`class_cond` asks the dataset for its classes)."""
        overrides = {
            "batch_size": self.batch_size,
            "learning_rate": self.lr,
            "warmup_steps": self.warmup_steps,
            "ema_decay": self.ema_decay,
            "prediction": self.prediction,
            "snr_gamma": self.snr_gamma,
            "schedule": self.schedule,
            "train_steps": self.steps,
            "image_size": self.image_size,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "lr_schedule": self.lr_schedule,
            "grad_clip": self.grad_clip,
            "grad_accum": self.grad_accum,
            "ema_warmup_power": self.ema_warmup_power,
            "cuda_graph": self.cuda_graph,
        }
        if self.class_cond:
            from keras_ddpm import data

            classes = data.num_classes(self.dataset, data_dir=self.data_dir)
            if not classes:
                raise ValueError(
                    f"Dataset {self.dataset!r} has no labels, so --class-cond cannot be used."
                )
            overrides["num_classes"] = classes
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return get_preset(self.preset).replace(**overrides)
