"""Reading PyTorch and safetensors files into NumPy, without unpickling arbitrary objects.

PyTorch files (`.pth`, `.pt`, `.bin`, `.ckpt`) load with `torch.load(weights_only=True)`: tensors,
containers and plain values only, never code. safetensors files hold nothing else. Every
tensor comes back as a float32 NumPy array in its file's own layout.
"""

import os
import zipfile

import numpy as np

# A legacy (pre-1.6, not zip) PyTorch file starts with a pickle: protocol 2's opcode.
_PICKLE_START = b"\x80"


def is_torch_file(path):
    """Whether `path` looks like a file `torch.save` wrote (a zip holding data.pkl, or a legacy
    pickle), from its first bytes; nothing is loaded."""
    try:
        with open(path, "rb") as f:
            start = f.read(2)
    except OSError:
        return False
    if start == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("data.pkl") for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return True  # a cut-short zip: `load_torch` names it as such
    return start[:1] == _PICKLE_START


def is_safetensors_file(path):
    """Whether `path` starts as a safetensors file does: an 8-byte header length, then JSON."""
    try:
        with open(path, "rb") as f:
            start = f.read(9)
    except OSError:
        return False
    return len(start) == 9 and start[8:9] == b"{"


def load_torch(path):
    """The contents of a PyTorch file as torch saved them (tensors stay tensors, memory-mapped
    where the file allows; `numpy_state_dict` converts the ones a reader uses).

    Raises ValueError (one sentence) for a file torch cannot read, such as a cut-short download,
    or one that holds objects other than tensors and plain values.
    """
    import torch

    name = os.path.basename(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        text = str(error).strip()
        if "weights_only" in text or "Unsupported global" in text:
            raise ValueError(
                f"{name} holds Python objects besides tensors, which keras_ddpm does not unpickle; "
                "save its state_dict() with torch.save and convert that."
            ) from None
        reason = text.splitlines()[0] if text else type(error).__name__
        raise ValueError(
            f"{name} is not a complete PyTorch file ({reason}); download or save it again."
        ) from None


def numpy_state_dict(value):
    """{name: float32 array} of a state dict (a mapping of names to tensors); None for anything
    else (a list, a number, a mapping that holds more than tensors)."""
    import torch

    if not isinstance(value, dict) or not value:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        return None
    return {k: _float32(v.detach().to(torch.float32).numpy()) for k, v in value.items()}


def load_safetensors(path):
    """{name: float32 array} of a safetensors file; ValueError (one sentence) for a damaged one."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"{os.path.basename(path)} is not a complete safetensors file ({error}); download it "
            "again."
        ) from None
    return {key: _float32(value) for key, value in tensors.items()}


def _is_zip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"PK"


def _float32(array):
    return np.asarray(array, dtype=np.float32)


def torch_to_keras(array):
    """A PyTorch weight in Keras' layout: a 3x3 convolution's (out, in, kh, kw) as (kh, kw, in,
    out); a Linear's (out, in) or a 1x1 convolution's (out, in, 1, 1) as a Dense kernel (in, out);
    biases and norm scales as they are."""
    if array.ndim == 4 and array.shape[2:] == (1, 1):
        return np.ascontiguousarray(array[:, :, 0, 0].T)
    if array.ndim == 4:
        return np.ascontiguousarray(np.transpose(array, (2, 3, 1, 0)))
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return array
