"""The FID Inception network: the 2015 TensorFlow Inception graph as a Keras model.

Published FIDs (Heusel et al. 2017's TTUR code, and the papers that used it or its ports) come
from `inception-2015-12-05.tgz`, an InceptionV3 with 1008 classes, not the ImageNet InceptionV3
of `keras.applications`. pytorch-fid (Seitzer 2020) ported that graph to PyTorch as torchvision's
InceptionV3 layout with three differences, in its `FIDInceptionA/C/E_1/E_2` blocks:

- the average pooling of the pool branches in Mixed_5b..5d, 6b..6e and 7b does not count the
  zero padding in the mean (TensorFlow's SAME average pooling);
- the pool branch of the last block, Mixed_7c, takes a max pooling instead of an average;
- no auxiliary head, and a 1008-way classifier (`fc`).

`fid_inception_v3()` builds that network in Keras (float32 whatever the dtype policy), with
layers named after pytorch-fid's modules, "-" for "." (`Mixed_5b-branch1x1-conv` is
`Mixed_5b.branch1x1.conv`), so `load_state_dict` copies pytorch-fid's published weights
(`pt_inception-2015-12-05-6726825d.pth`) one tensor per weight. Its input is (N, 299, 299, 3)
in [-1, 1]; its output the 2048-d average pool ("pool_3" of the TensorFlow graph), or the 1008
logits with `include_top=True`.
"""

import os

import keras
from keras import layers

FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FILE_NAME
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d"  # the weights' name in cache keys and records
INPUT_SIZE = 299
NUM_CLASSES = 1008
FEATURE_DIM = 2048
DTYPE = "float32"  # features are compared across runs: never a mixed-precision policy's dtype


# The network (torchvision's InceptionV3 layout, with pytorch-fid's FID blocks).


def conv_bn(x, filters, kernel_size, name, strides=1, padding="valid"):
    """torchvision's BasicConv2d: convolution without bias, batch norm (eps 1e-3), ReLU."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides,
        padding,
        use_bias=False,
        kernel_initializer="zeros",  # placeholders: the weights are always loaded
        dtype=DTYPE,
        name=f"{name}-conv",
    )(x)
    x = layers.BatchNormalization(epsilon=1e-3, dtype=DTYPE, name=f"{name}-bn")(x)
    return layers.ReLU(dtype=DTYPE, name=f"{name}-relu")(x)


def pool_branch(x, filters, name, pooling="average"):
    """3x3 stride-1 SAME pooling then a 1x1 conv. Keras' SAME average pooling leaves the padding
    out of the mean on every backend, as TensorFlow's does (pytorch-fid's
    `count_include_pad=False`)."""
    pool = layers.AveragePooling2D if pooling == "average" else layers.MaxPooling2D
    x = pool(3, strides=1, padding="same", dtype=DTYPE, name=f"{name}-pool")(x)
    return conv_bn(x, filters, 1, f"{name}-branch_pool")


def concat(tensors, name):
    return layers.Concatenate(axis=-1, dtype=DTYPE, name=name)(tensors)


def inception_a(x, pool_features, name):
    """Mixed_5b..5d (pytorch-fid's FIDInceptionA)."""
    branch1x1 = conv_bn(x, 64, 1, f"{name}-branch1x1")
    branch5x5 = conv_bn(x, 48, 1, f"{name}-branch5x5_1")
    branch5x5 = conv_bn(branch5x5, 64, 5, f"{name}-branch5x5_2", padding="same")
    branch3x3dbl = conv_bn(x, 64, 1, f"{name}-branch3x3dbl_1")
    branch3x3dbl = conv_bn(branch3x3dbl, 96, 3, f"{name}-branch3x3dbl_2", padding="same")
    branch3x3dbl = conv_bn(branch3x3dbl, 96, 3, f"{name}-branch3x3dbl_3", padding="same")
    branch_pool = pool_branch(x, pool_features, name)
    return concat([branch1x1, branch5x5, branch3x3dbl, branch_pool], name)


def inception_b(x, name):
    """Mixed_6a: the grid reduction 35x35 -> 17x17."""
    branch3x3 = conv_bn(x, 384, 3, f"{name}-branch3x3", strides=2)
    branch3x3dbl = conv_bn(x, 64, 1, f"{name}-branch3x3dbl_1")
    branch3x3dbl = conv_bn(branch3x3dbl, 96, 3, f"{name}-branch3x3dbl_2", padding="same")
    branch3x3dbl = conv_bn(branch3x3dbl, 96, 3, f"{name}-branch3x3dbl_3", strides=2)
    branch_pool = layers.MaxPooling2D(3, strides=2, dtype=DTYPE, name=f"{name}-pool")(x)
    return concat([branch3x3, branch3x3dbl, branch_pool], name)


def inception_c(x, channels_7x7, name):
    """Mixed_6b..6e (pytorch-fid's FIDInceptionC): factorised 7x7 convolutions."""
    c7 = channels_7x7
    branch1x1 = conv_bn(x, 192, 1, f"{name}-branch1x1")
    branch7x7 = conv_bn(x, c7, 1, f"{name}-branch7x7_1")
    branch7x7 = conv_bn(branch7x7, c7, (1, 7), f"{name}-branch7x7_2", padding="same")
    branch7x7 = conv_bn(branch7x7, 192, (7, 1), f"{name}-branch7x7_3", padding="same")
    branch7x7dbl = conv_bn(x, c7, 1, f"{name}-branch7x7dbl_1")
    for index, (filters, kernel) in enumerate(
        [(c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))], start=2
    ):
        branch7x7dbl = conv_bn(
            branch7x7dbl, filters, kernel, f"{name}-branch7x7dbl_{index}", padding="same"
        )
    branch_pool = pool_branch(x, 192, name)
    return concat([branch1x1, branch7x7, branch7x7dbl, branch_pool], name)


def inception_d(x, name):
    """Mixed_7a: the grid reduction 17x17 -> 8x8."""
    branch3x3 = conv_bn(x, 192, 1, f"{name}-branch3x3_1")
    branch3x3 = conv_bn(branch3x3, 320, 3, f"{name}-branch3x3_2", strides=2)
    branch7x7x3 = conv_bn(x, 192, 1, f"{name}-branch7x7x3_1")
    branch7x7x3 = conv_bn(branch7x7x3, 192, (1, 7), f"{name}-branch7x7x3_2", padding="same")
    branch7x7x3 = conv_bn(branch7x7x3, 192, (7, 1), f"{name}-branch7x7x3_3", padding="same")
    branch7x7x3 = conv_bn(branch7x7x3, 192, 3, f"{name}-branch7x7x3_4", strides=2)
    branch_pool = layers.MaxPooling2D(3, strides=2, dtype=DTYPE, name=f"{name}-pool")(x)
    return concat([branch3x3, branch7x7x3, branch_pool], name)


def inception_e(x, name, pooling):
    """Mixed_7b (FIDInceptionE_1, average pooling) and Mixed_7c (FIDInceptionE_2, max pooling:
    a quirk of the 2015 graph that pytorch-fid keeps)."""
    branch1x1 = conv_bn(x, 320, 1, f"{name}-branch1x1")
    branch3x3 = conv_bn(x, 384, 1, f"{name}-branch3x3_1")
    branch3x3 = concat(
        [
            conv_bn(branch3x3, 384, (1, 3), f"{name}-branch3x3_2a", padding="same"),
            conv_bn(branch3x3, 384, (3, 1), f"{name}-branch3x3_2b", padding="same"),
        ],
        f"{name}-branch3x3",
    )
    branch3x3dbl = conv_bn(x, 448, 1, f"{name}-branch3x3dbl_1")
    branch3x3dbl = conv_bn(branch3x3dbl, 384, 3, f"{name}-branch3x3dbl_2", padding="same")
    branch3x3dbl = concat(
        [
            conv_bn(branch3x3dbl, 384, (1, 3), f"{name}-branch3x3dbl_3a", padding="same"),
            conv_bn(branch3x3dbl, 384, (3, 1), f"{name}-branch3x3dbl_3b", padding="same"),
        ],
        f"{name}-branch3x3dbl",
    )
    branch_pool = pool_branch(x, 192, name, pooling)
    return concat([branch1x1, branch3x3, branch3x3dbl, branch_pool], name)


def fid_inception_v3(include_top=False, name="fid_inception_v3"):
    """The FID Inception network with placeholder weights (zero kernels: load the real ones with
    `load_weights` or `load_state_dict`).

    (N, 299, 299, 3) in [-1, 1] -> (N, 2048) pool features, or (N, 1008) logits with
    `include_top` (the 2015 graph's classifier; its class 0 is a background class).
    """
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), dtype=DTYPE, name="images")
    x = conv_bn(inputs, 32, 3, "Conv2d_1a_3x3", strides=2)
    x = conv_bn(x, 32, 3, "Conv2d_2a_3x3")
    x = conv_bn(x, 64, 3, "Conv2d_2b_3x3", padding="same")
    x = layers.MaxPooling2D(3, strides=2, dtype=DTYPE, name="maxpool1")(x)
    x = conv_bn(x, 80, 1, "Conv2d_3b_1x1")
    x = conv_bn(x, 192, 3, "Conv2d_4a_3x3")
    x = layers.MaxPooling2D(3, strides=2, dtype=DTYPE, name="maxpool2")(x)
    x = inception_a(x, 32, "Mixed_5b")
    x = inception_a(x, 64, "Mixed_5c")
    x = inception_a(x, 64, "Mixed_5d")
    x = inception_b(x, "Mixed_6a")
    for block, channels_7x7 in zip("bcde", (128, 160, 160, 192)):
        x = inception_c(x, channels_7x7, f"Mixed_6{block}")
    x = inception_d(x, "Mixed_7a")
    x = inception_e(x, "Mixed_7b", "average")
    x = inception_e(x, "Mixed_7c", "max")
    outputs = layers.GlobalAveragePooling2D(dtype=DTYPE, name="pool_3")(x)
    if include_top:
        outputs = layers.Dense(NUM_CLASSES, kernel_initializer="zeros", dtype=DTYPE, name="fc")(
            outputs
        )
    return keras.Model(inputs, outputs, name=name)


# Weights: pytorch-fid's state dict, or a Keras `.weights.h5` of this model.


def read_state_dict(path):
    """A PyTorch state dict file -> {name: float32 NumPy array}, read with
    `torch.load(weights_only=True)` (no pickled code runs; `keras_ddpm.convert.files`)."""
    from keras_ddpm.convert import files

    state = files.numpy_state_dict(files.load_torch(path))
    if state is None:
        raise ValueError(
            f"{path} does not hold a state dict (a mapping of names to tensors), as pytorch-fid's "
            "weights file does."
        )
    return state


def load_state_dict(model, state_dict):
    """Copies pytorch-fid's FID Inception state dict (NumPy arrays, by PyTorch name) into
    `model` (from `fid_inception_v3`): conv kernels OIHW -> HWIO, batch-norm weight, bias, running
    mean and variance, and the classifier (only with `include_top`).

    Raises ValueError naming the first missing, surplus or misshapen tensor, so a different
    network's file cannot load silently.
    """
    remaining = {
        key: value for key, value in state_dict.items() if not key.endswith(".num_batches_tracked")
    }
    if not any(isinstance(layer, layers.Dense) for layer in model.layers):
        remaining = {key: value for key, value in remaining.items() if not key.startswith("fc.")}

    def take(key):
        if key not in remaining:
            raise ValueError(
                f"The weights are not pytorch-fid's FID Inception: {key} is missing."
            ) from None
        return remaining.pop(key)

    for layer in model.layers:
        name = layer.name.replace("-", ".")  # the PyTorch module's name
        if isinstance(layer, layers.Conv2D):
            values = [take(f"{name}.weight").transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.BatchNormalization):
            parts = ("weight", "bias", "running_mean", "running_var")
            values = [take(f"{name}.{part}") for part in parts]
        elif isinstance(layer, layers.Dense):
            values = [take(f"{name}.weight").T, take(f"{name}.bias")]
        else:
            continue
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [value.shape for value in values] != expected:
            raise ValueError(
                f"The weights are not pytorch-fid's FID Inception: {name} has shapes "
                f"{[value.shape for value in values]}, the network {expected}."
            )
        layer.set_weights(values)
    if remaining:
        raise ValueError(
            f"The weights are not pytorch-fid's FID Inception: {len(remaining)} tensors are not "
            f"in it, such as {sorted(remaining)[0]}."
        )
    return model


def weights_file(path):
    """`path` as a string; FileNotFoundError (one sentence, the URL) when there is no such file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No FID Inception weights file at {path}; download {WEIGHTS_URL} and pass its path "
            "with --inception-weights."
        )
    return path


def load_weights(model, path):
    """Loads `path` into `model` and returns it: pytorch-fid's `.pth` (or any PyTorch state dict
    of that network) or a `.weights.h5` saved from a `fid_inception_v3` model."""
    path = weights_file(path)
    if path.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except Exception as error:  # HDF5 and layout errors come in many kinds
            raise ValueError(
                f"Could not load FID Inception weights from {path} ({type(error).__name__}: "
                f"{error})."
            ) from None
        return model
    return load_state_dict(model, read_state_dict(path))


def weights_cache_dir():
    """Where `keras.utils.get_file` keeps the weights: $KERAS_HOME/models or ~/.keras/models."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def download_weights():
    """The path of pytorch-fid's weights in Keras' cache, downloaded on first use and checked
    against their SHA-256; ValueError with one sentence (the URL, where to put the file) when
    they cannot be fetched."""
    try:
        return keras.utils.get_file(
            FILE_NAME, WEIGHTS_URL, file_hash=WEIGHTS_SHA256, cache_subdir="models"
        )
    except Exception:  # offline, refused, or a download that fails its checksum
        raise ValueError(
            f"Could not download the FID Inception weights (offline?): fetch {WEIGHTS_URL} where "
            f"there is internet and put it in {weights_cache_dir()}/, or pass its path with "
            "--inception-weights PATH."
        ) from None
