"""Model files as users name them: the shipped model, and loading with errors that say what to do.

Keras loads only when a model does, so the CLI's `--help` stays quick.
"""

import os

from keras_ddpm.errors import describe_error

# Which weights a converted checkpoint samples with, where its file holds both (`convert`).
CONVERTED_WEIGHTS = ("ema", "raw")

# The models that ship with the project, beside the package in its source tree.
_SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED_MODELS = os.path.join(_SOURCE_TREE, "saved_models")


def shipped_models(directory=None):
    """The .keras files in saved_models/ (or `directory`), sorted; none when it is missing."""
    directory = directory or SAVED_MODELS
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".keras"))


def default_model_path():
    """The model that ships in saved_models/ (mnist.keras, or the only .keras file there)."""
    shipped = [os.path.basename(path) for path in shipped_models()]
    if "mnist.keras" in shipped:
        return os.path.join(SAVED_MODELS, "mnist.keras")
    if len(shipped) == 1:
        return os.path.join(SAVED_MODELS, shipped[0])
    if not shipped:
        raise ValueError(
            "No model ships in saved_models/ yet; pass --model PATH (a .keras file written by "
            "`train`)."
        )
    raise ValueError(
        f"saved_models/ holds several models ({', '.join(shipped)}); pass --model PATH to choose "
        "one."
    )


def check_model_path(path):
    """Raises one sentence, before Keras loads, for a `--model` that cannot name a model: a
    missing .keras file, or a folder of .keras files (which it names). Other paths (a diffusers
    folder, a Hub id, another checkpoint format) are left to `load_model_file`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = shipped_models(path)
        if inside:
            names = ", ".join(os.path.join(path, os.path.basename(f)) for f in inside)
            raise ValueError(
                f"{path} is a folder; pass one of the .keras files in it with --model: {names}."
            )
    elif path.endswith(".keras") and not os.path.isfile(path):
        raise FileNotFoundError(
            f"No model file at {path}; train one with `python cli.py train --out DIR` and pass "
            "DIR/model.keras."
        )


def model_file(path):
    """The `.keras` file that `path` names: `path` itself, or, for a published checkpoint
    (a diffusers folder or Hugging Face Hub id, or another format `keras_ddpm.convert` reads),
    its conversion, converted once and cached."""
    from keras_ddpm import convert

    if convert.detect_format(path) is None:
        return path
    return convert.converted_model_path(path)


def load_model_file(path):
    """`keras_ddpm.load_model`, with the next step named when there is no file and one sentence
    (a `ValueError`) for any file Keras cannot read as a keras_ddpm model. A published checkpoint
    (`model_file`) loads as its converted model."""
    from keras_ddpm.diffusion_model import load_model

    check_model_path(path)
    path = model_file(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No model file at {path}; train one with `python cli.py train --out DIR` and pass "
            "DIR/model.keras."
        )
    try:
        return load_model(path)
    except ValueError:  # already one sentence: damaged, truncated, or not a keras_ddpm model
        raise
    except Exception as error:  # anything else Keras or h5py raise for a file they cannot read
        raise ValueError(
            f"Could not load {path} as a keras_ddpm model ({type(error).__name__}: "
            f"{describe_error(error)})."
        ) from None
