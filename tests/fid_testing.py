"""Shared stand-ins for FID tests: a tiny feature extractor, folders of noise images, and
pytorch-fid's network with random weights."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_ddpm import fid


def tiny_extractor(name="tiny-test", batch_size=8, seed=0):
    """A cheap stand-in for InceptionV3 with the same interface (32x32 input, 8-d features)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    return fid.FeatureExtractor(model, name, input_size=32, batch_size=batch_size)


def random_fid_inception(seed=0):
    """`inception.fid_inception_v3()` with random He-normal kernels (centred per output channel)
    and identity batch norms: finite, varied 2048-d features without a download."""
    from keras_ddpm import inception

    model = inception.fid_inception_v3()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            shape = tuple(layer.kernel.shape)
            kernel = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:3]))
            layer.kernel.assign((kernel - kernel.mean(axis=(0, 1, 2))).astype("float32"))
    return model


def write_images(directory, count, size=16, seed=0, high=256):
    """`count` grayscale PNGs of uniform noise in [0, high), numbered from 000.png; the folder."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, high, (size, size), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(directory, f"{i:03d}.png"))
    return str(directory)


# pytorch-fid, clean-fid and torch-fidelity (test-only): their networks with random weights.


def import_torchvision():
    """Imports torchvision's Python code beside a CPU build of torch.

    torchvision's PyPI wheel for torch 2.13 is a CUDA build: installed with `--no-deps` beside
    the CPU torch, its C extension (detection operators) cannot load, and its import then stops
    where it registers fake kernels for two of those operators (`nms`, `qnms`). Declaring their
    schemas first lets it import; the models pytorch-fid and clean-fid use need none of them.
    """
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        pytest.skip("torchvision is not installed (see the README's test command)")
    library = os.path.join(os.path.dirname(spec.origin), "_C.so")
    try:
        torch.ops.load_library(library)
    except (OSError, RuntimeError):
        if not hasattr(import_torchvision, "schemas"):
            schemas = torch.library.Library("torchvision", "DEF")  # kept alive with the function
            for name in ("nms", "qnms"):
                schemas.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            import_torchvision.schemas = schemas
    import torchvision

    return torchvision


def random_pytorch_fid(directory, seed=0, calibration_images=2):
    """pytorch-fid's FID InceptionV3 with random, seeded weights, and those weights saved as the
    file pytorch-fid publishes (the state dict of its `fid_inception_v3()`).

    The network is built by pytorch-fid's own code, loading its weights with its own
    (strict) `load_state_dict`: its download is replaced by a read of the saved file. The weights
    are He-normal convolutions (each output channel's kernel centred, so that batch norm does not
    subtract large means: float32 cancellation would amplify round-off through 94 layers),
    batch-norm scales in [0.5, 1.5] and offsets ~ N(0, 0.2), and running statistics set from
    `calibration_images` random images so that activations keep their scale.

    Returns `(network, path)`: pytorch-fid's `InceptionV3` (eval mode, no resizing or scaling
    inside: it takes (N, 3, 299, 299) in [-1, 1]) and the .pth file.
    """
    import torch

    torchvision = import_torchvision()
    from pytorch_fid import inception as pytorch_fid_inception

    path = os.path.join(str(directory), "pt_inception_random.pth")
    inception3 = torchvision.models.inception.Inception3
    original_load = inception3.load_state_dict
    # First a network without any weights loaded, to draw them in.
    inception3.load_state_dict = lambda self, state_dict, *args, **kwargs: None
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: {})
            network = pytorch_fid_inception.fid_inception_v3()
    finally:
        inception3.load_state_dict = original_load
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if parameter.ndim > 1:  # conv kernels, the classifier
                fan_in = parameter[0].numel()
                weight = torch.randn(parameter.shape, generator=generator) * (2 / fan_in) ** 0.5
                if parameter.ndim == 4:  # centred, so batch norm subtracts no large means
                    weight -= weight.mean(dim=(1, 2, 3), keepdim=True)
                parameter.copy_(weight)
            elif name.endswith("bn.weight"):
                parameter.copy_(torch.rand(parameter.shape, generator=generator) + 0.5)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average: one batch sets the statistics
        images = torch.rand((calibration_images, 3, 299, 299), generator=generator) * 2 - 1
        network.train()(images)
    torch.save(network.state_dict(), path)
    # Then pytorch-fid's feature network as its users build it, reading that file.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            pytorch_fid_inception,
            "load_state_dict_from_url",
            lambda *args, **kwargs: torch.load(path, weights_only=True),
        )
        model = pytorch_fid_inception.InceptionV3([3], resize_input=False, normalize_input=False)
    return model.eval(), path
