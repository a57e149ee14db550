"""keras_ddpm: denoising diffusion models (DDPM, DDIM) in Keras 3, on TensorFlow, PyTorch and JAX.

The public names below load on first use (PEP 562), so importing a Keras-free module such as
`keras_ddpm.sampling_options` (the CLI's `--help`) does not import Keras.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {  # public name -> the module that defines it
    "PRESETS": "keras_ddpm.config",
    "DiffusionConfig": "keras_ddpm.config",
    "Preset": "keras_ddpm.config",
    "TrainConfig": "keras_ddpm.config",
    "UNetConfig": "keras_ddpm.config",
    "get_preset": "keras_ddpm.config",
    "DiffusionModel": "keras_ddpm.diffusion_model",
    "load_model": "keras_ddpm.diffusion_model",
    "convert_model": "keras_ddpm.convert",
    "make_optimizer": "keras_ddpm.optimizers",
    "NoiseSchedule": "keras_ddpm.schedules",
    "build_unet": "keras_ddpm.unet",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:  # a submodule, e.g. `keras_ddpm.backend` after `import keras_ddpm`
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
