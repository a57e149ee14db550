"""The blocks of the DDPM UNet (Ho et al. 2020, appendix B; the authors'
`diffusion_tf/models/unet.py`).

Initialisation follows the paper's code: Glorot-uniform (variance scaling 1, fan_avg, uniform)
everywhere except the last convolution of each residual branch and the attention output
projection, which start at zero so that every block starts as the identity.
`kernel_initializer` (the blocks' and `build_unet`'s) replaces every kernel's initializer, for a
network whose weights are set right after it is built (`keras_ddpm.convert`: "zeros", since on
JAX each random kernel shape costs a compilation).
"""

import math

import keras
from keras import layers
from keras import ops

from keras_ddpm import backend
from keras_ddpm.config import DOWNSAMPLE_PADDINGS
from keras_ddpm.config import TIMESTEP_EMBEDDINGS

GROUP_NORM_EPSILON = 1e-6  # tf.contrib.layers.group_norm's default, as in the paper's code


@keras.saving.register_keras_serializable(package="keras_ddpm")
class Conv2D(layers.Conv2D):
    """`keras.layers.Conv2D` (same weights and results) that convolves the NHWC data, bias
    included, with the backend's own kernel where it has one (`backend.conv2d_nhwc`: PyTorch's,
    without the layout copies of Keras' torch backend).

    Named as Keras' class on purpose (so is `GroupNormalization`): a `.keras` file keys a model's
    layers by their snake-cased class name, so files saved with Keras' layers keep loading.
    """

    def add_weight(self, *args, **kwargs):
        # The kernel keeps Keras' (kh, kw, in, out) shape, stored in the memory order the
        # backend's kernel reads (PyTorch: its channels_last (out, in, kh, kw) kernel).
        if kwargs.get("name") == "kernel" and self._nhwc_applies():
            kwargs["initializer"] = backend.conv_kernel_initializer(kwargs.get("initializer"))
        return super().add_weight(*args, **kwargs)

    def call(self, inputs):
        padding = self._nhwc_padding(inputs.shape)
        result = None
        if padding is not None:
            # The bias goes into the convolution (Keras adds it after, one more pass each way).
            bias = self.bias if self.use_bias else None
            cache = getattr(self, "_kernel_cache", None)
            result = backend.conv2d_nhwc(inputs, self.kernel, self.strides, padding, bias, cache)
        if result is None:
            return super().call(inputs)
        outputs, self._kernel_cache = result
        return outputs if self.activation is None else self.activation(outputs)

    def _nhwc_applies(self):
        plain = self.dilation_rate == (1, 1) and self.groups == 1
        return plain and self.data_format == "channels_last"

    def _nhwc_padding(self, input_shape):
        """Keras' padding as (top, bottom, left, right) zeros; None where `backend.conv2d_nhwc`
        does not apply."""
        if not self._nhwc_applies():
            return None
        if self.padding == "valid":
            return (0, 0, 0, 0)
        pads = ()
        for size, kernel_size, stride in zip(input_shape[1:3], self.kernel_size, self.strides):
            if size is None:
                return None
            # "same" as TensorFlow pads: ceil(size / stride) outputs, the odd zero row/column after.
            total = max((-(-size // stride) - 1) * stride + kernel_size - size, 0)
            pads += (total // 2, total - total // 2)
        return pads


@keras.saving.register_keras_serializable(package="keras_ddpm")
class Dense(layers.Dense):
    """`keras.layers.Dense` that adds the bias inside the matrix product where the backend has
    such a kernel (`backend.dense`: PyTorch's `addmm`; Keras adds it after, one more pass over
    the output)."""

    def call(self, inputs, training=None):
        plain = self.bias is not None and self.quantization_mode is None and not self.lora_enabled
        outputs = backend.dense(inputs, self.kernel, self.bias) if plain else None
        if outputs is None:
            return super().call(inputs, training=training)
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package="keras_ddpm")
class GroupNormalization(layers.GroupNormalization):
    """`keras.layers.GroupNormalization` over the last axis; where the backend has one fused
    kernel on the NHWC data (`backend.group_norm_nhwc`: PyTorch's), that instead of Keras'
    reductions."""

    def call(self, inputs):
        last_axis = self.axis in (-1, len(inputs.shape) - 1)
        y = None
        if last_axis and len(inputs.shape) == 4 and self.scale and self.center:
            y = backend.group_norm_nhwc(inputs, self.groups, self.gamma, self.beta, self.epsilon)
        if y is None:
            return super().call(inputs)
        if keras.backend.standardize_dtype(y.dtype) == self.compute_dtype:
            return y
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_ddpm")
class SinusoidalEmbedding(layers.Layer):
    """Transformer sinusoidal position embedding of integer timesteps, (N,) -> (N, dim).

    layout "sin_cos" (DDPM's `get_timestep_embedding`, diffusers' with freq_shift 1): the first
    half of the features are sines, the second half cosines, with frequencies
    10000^(-i / (dim/2 - 1)). "interleaved" (w86763777/pytorch-ddpm's table, which seed 000's
    checkpoints use): sin and cos of each frequency side by side, frequencies 10000^(-2i / dim).
    """

    def __init__(self, dim, layout="sin_cos", **kwargs):
        super().__init__(**kwargs)
        if dim < 4 or dim % 2:
            raise ValueError(f"dim must be even and at least 4. Received: dim={dim}")
        if layout not in TIMESTEP_EMBEDDINGS:
            raise ValueError(
                f"layout must be one of {TIMESTEP_EMBEDDINGS}. Received: layout={layout!r}"
            )
        self.dim = dim
        self.layout = layout

    def call(self, timesteps):
        half = self.dim // 2
        interleaved = self.layout == "interleaved"
        exponent = -math.log(10000.0) / (half if interleaved else half - 1)
        frequencies = ops.exp(ops.arange(half, dtype="float32") * exponent)
        angles = ops.cast(timesteps, "float32")[:, None] * frequencies[None, :]
        if interleaved:
            pairs = ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1)
            return ops.reshape(pairs, (-1, self.dim))
        return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "layout": self.layout}


@keras.saving.register_keras_serializable(package="keras_ddpm")
class ResidualBlock(layers.Layer):
    """Wide-ResNet block with the timestep embedding added after the first convolution.

    h = conv(swish(GN(x))); h += dense(swish(temb)); h = conv(dropout(swish(GN(h))));
    returns shortcut(x) + h, with a 1x1 shortcut ("nin") when the channel count changes.
    """

    def __init__(
        self,
        channels,
        num_groups=32,
        dropout=0.0,
        epsilon=GROUP_NORM_EPSILON,
        kernel_initializer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = channels
        self.num_groups = num_groups
        self.dropout = dropout
        self.epsilon = epsilon
        self.kernel_initializer = kernel_initializer
        glorot, zeros = kernel_initializer or "glorot_uniform", kernel_initializer or "zeros"
        self.norm1 = GroupNormalization(num_groups, epsilon=epsilon, name="norm1")
        self.conv1 = Conv2D(channels, 3, padding="same", kernel_initializer=glorot, name="conv1")
        self.temb_proj = Dense(channels, kernel_initializer=glorot, name="temb_proj")
        self.norm2 = GroupNormalization(num_groups, epsilon=epsilon, name="norm2")
        self.drop = layers.Dropout(dropout, name="dropout")
        self.conv2 = Conv2D(channels, 3, padding="same", kernel_initializer=zeros, name="conv2")
        self.shortcut = None

    def build(self, input_shape):
        x_shape, temb_shape = input_shape
        self.norm1.build(x_shape)
        self.conv1.build(x_shape)
        h_shape = (*x_shape[:-1], self.channels)
        self.temb_proj.build(temb_shape)
        self.norm2.build(h_shape)
        self.conv2.build(h_shape)
        if x_shape[-1] != self.channels:
            initializer = self.kernel_initializer or "glorot_uniform"
            self.shortcut = Dense(
                self.channels, kernel_initializer=initializer, name="nin_shortcut"
            )
            self.shortcut.build(x_shape)

    def call(self, inputs, training=None):
        x, temb = inputs
        # Sublayers run through `.call`: this block's `__call__` already set the dtype policy and
        # training flag, and Keras' per-call bookkeeping is most of an eager (PyTorch) forward's
        # Python time.
        h = self.conv1.call(ops.silu(self.norm1.call(x)))
        h = h + self.temb_proj.call(ops.silu(temb))[:, None, None, :]
        h = self.conv2.call(self.drop.call(ops.silu(self.norm2.call(h)), training=training))
        if self.shortcut is not None:
            x = self.shortcut.call(x)
        return x + h

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], self.channels)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "num_groups": self.num_groups,
            "dropout": self.dropout,
            "epsilon": self.epsilon,
            "kernel_initializer": self.kernel_initializer,
        }


@keras.saving.register_keras_serializable(package="keras_ddpm")
class AttentionBlock(layers.Layer):
    """Single-head self-attention over all positions, with a residual connection.

    q, k, v are 1x1 projections of GN(x); softmax(q k^T / sqrt(C)) v is projected back
    (zero-initialised) and added to x.
    """

    def __init__(
        self, num_groups=32, epsilon=GROUP_NORM_EPSILON, kernel_initializer=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.num_groups = num_groups
        self.epsilon = epsilon
        self.kernel_initializer = kernel_initializer
        self.norm = GroupNormalization(num_groups, epsilon=epsilon, name="norm")

    def build(self, input_shape):
        channels = input_shape[-1]
        self.norm.build(input_shape)
        glorot = self.kernel_initializer or "glorot_uniform"
        self.q = Dense(channels, kernel_initializer=glorot, name="q")
        self.k = Dense(channels, kernel_initializer=glorot, name="k")
        self.v = Dense(channels, kernel_initializer=glorot, name="v")
        zeros = self.kernel_initializer or "zeros"
        self.proj_out = Dense(channels, kernel_initializer=zeros, name="proj_out")
        for dense in (self.q, self.k, self.v, self.proj_out):
            dense.build(input_shape)

    def call(self, x):
        shape = ops.shape(x)  # height and width may be unknown (None) while TensorFlow traces
        channels = x.shape[-1]
        h = self.norm.call(x)  # sublayers through `.call`, as in ResidualBlock
        q, k, v = (dense.call(h) for dense in (self.q, self.k, self.v))
        y = backend.attention_nhwc(q, k, v)
        if y is None:
            # (N, H*W, heads=1, C): the layout keras.ops.dot_product_attention expects.
            q, k, v = (ops.reshape(t, (shape[0], -1, 1, channels)) for t in (q, k, v))
            y = ops.reshape(ops.dot_product_attention(q, k, v), shape)  # scaled by 1/sqrt(C)
        return x + self.proj_out.call(y)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "num_groups": self.num_groups,
            "epsilon": self.epsilon,
            "kernel_initializer": self.kernel_initializer,
        }


@keras.saving.register_keras_serializable(package="keras_ddpm")
class Downsample(layers.Layer):
    """3x3 convolution with stride 2.

    padding "same": TensorFlow's, one zero row and column after the image (DDPM's code; diffusers'
    downsample_padding 0); "symmetric": one on every side (PyTorch's padding=1, as in
    w86763777/pytorch-ddpm and diffusers' downsample_padding 1). Both halve an even size; they
    sample the image one pixel apart.
    """

    def __init__(self, channels, padding="same", kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(
                f"padding must be one of {DOWNSAMPLE_PADDINGS}. Received: padding={padding!r}"
            )
        self.channels = channels
        self.padding = padding
        self.kernel_initializer = kernel_initializer
        self.conv = Conv2D(
            channels,
            3,
            strides=2,
            padding="same" if padding == "same" else "valid",
            kernel_initializer=kernel_initializer or "glorot_uniform",
            name="conv",
        )

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        if self.padding == "symmetric":
            x = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return self.conv.call(x)

    def compute_output_shape(self, input_shape):
        if self.padding == "symmetric":
            height, width = (None if d is None else d + 2 for d in input_shape[1:3])
            input_shape = (input_shape[0], height, width, input_shape[3])
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "padding": self.padding,
            "kernel_initializer": self.kernel_initializer,
        }


@keras.saving.register_keras_serializable(package="keras_ddpm")
class Upsample(layers.Layer):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.kernel_initializer = kernel_initializer
        self.upsample = layers.UpSampling2D(2, interpolation="nearest", name="upsample")
        initializer = kernel_initializer or "glorot_uniform"
        self.conv = Conv2D(channels, 3, padding="same", kernel_initializer=initializer, name="conv")

    def build(self, input_shape):
        self.upsample.build(input_shape)
        self.conv.build((input_shape[0], input_shape[1] * 2, input_shape[2] * 2, input_shape[3]))

    def call(self, x):
        # The backend's own nearest-neighbour kernel on the NHWC data where it has one (PyTorch:
        # Keras' layer makes two copies there).
        upsampled = backend.upsample_nearest_nhwc(x, 2)
        return self.conv.call(self.upsample.call(x) if upsampled is None else upsampled)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * 2, input_shape[2] * 2, self.channels)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "kernel_initializer": self.kernel_initializer,
        }
