"""keras_ddpm.convert.files: PyTorch and safetensors files read without unpickling objects."""

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from keras_ddpm.convert import files

pytestmark = pytest.mark.once  # file reading: NumPy and torch only, whatever the Keras backend


class Payload:
    """An arbitrary object a pickle could carry (and run code through)."""


def test_state_dicts_load_in_both_torch_formats(tmp_path):
    state = {"conv.weight": torch.arange(6, dtype=torch.float32).reshape(1, 1, 2, 3)}
    for name, zipped in (("new.pth", True), ("legacy.pth", False)):
        path = tmp_path / name
        torch.save(state, path, _use_new_zipfile_serialization=zipped)
        assert files.is_torch_file(path)
        arrays = files.numpy_state_dict(files.load_torch(str(path)))
        np.testing.assert_array_equal(arrays["conv.weight"], np.arange(6).reshape(1, 1, 2, 3))
        assert arrays["conv.weight"].dtype == np.float32


def test_objects_besides_tensors_are_not_unpickled(tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(ValueError, match="holds Python objects besides tensors, which keras_ddpm"):
        files.load_torch(str(path))


def test_cut_short_files_are_named_as_such(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert files.is_torch_file(path)
    with pytest.raises(ValueError, match=r"ckpt\.pth is not a complete PyTorch file \("):
        files.load_torch(str(path))
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"w": np.zeros(1000, np.float32)}, str(weights))
    assert files.is_safetensors_file(weights)
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"is not a complete safetensors file"):
        files.load_safetensors(str(weights))


def test_text_is_neither_format(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    assert not files.is_torch_file(path) and not files.is_safetensors_file(path)


def test_torch_layouts_become_keras_layouts():
    conv = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)  # (out, in, kh, kw)
    assert files.torch_to_keras(conv)[1, 2, 0, 1] == conv[1, 0, 1, 2]  # (kh, kw, in, out)
    linear = np.arange(6, dtype=np.float32).reshape(2, 3)  # (out, in)
    np.testing.assert_array_equal(files.torch_to_keras(linear), linear.T)
    np.testing.assert_array_equal(files.torch_to_keras(linear[:, :, None, None]), linear.T)
    bias = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(files.torch_to_keras(bias), bias)
