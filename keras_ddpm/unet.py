"""`build_unet(config)`: the DDPM UNet as a functional Keras model.

Mirrors `model()` in the DDPM authors' `diffusion_tf/models/unet.py`:
timestep embedding ch -> dense 4ch -> swish -> dense 4ch; `num_res_blocks`
residual blocks per level (attention after each at the listed resolutions) and a
strided-conv downsample between levels; a middle of block, attention, block;
on the way up `num_res_blocks + 1` blocks per level, each fed the concatenation
with one skip activation, then nearest upsample + conv; GN, swish, 3x3 conv out.

Class conditioning (not in DDPM; as in improved-diffusion and Ho & Salimans 2021):
a learned embedding of num_classes + 1 rows (the last is the "null" label used
for classifier-free guidance) added to the timestep embedding.
"""

import keras
from keras import layers
from keras import ops

from keras_ddpm.layers import AttentionBlock
from keras_ddpm.layers import Conv2D
from keras_ddpm.layers import Dense
from keras_ddpm.layers import Downsample
from keras_ddpm.layers import GroupNormalization
from keras_ddpm.layers import ResidualBlock
from keras_ddpm.layers import SinusoidalEmbedding
from keras_ddpm.layers import Upsample


def build_unet(config, name="unet", kernel_initializer=None):
    """Returns a `keras.Model` mapping [x_t, t] (or [x_t, t, label]) to an (N, H, W, C) output.

    `kernel_initializer`: None for the paper's initialisation; else every kernel's (e.g. "zeros"
    for a network whose weights are set next).
    """
    glorot, zeros = kernel_initializer or "glorot_uniform", kernel_initializer or "zeros"
    ch = config.base_channels
    size, channels = config.image_size, config.image_channels
    images = keras.Input((size, size, channels), name="images")
    timesteps = keras.Input((), dtype="int32", name="timesteps")
    inputs = [images, timesteps]

    temb = SinusoidalEmbedding(ch, config.timestep_embedding, name="timestep_embedding")(timesteps)
    temb = Dense(4 * ch, kernel_initializer=glorot, name="temb_dense0")(temb)
    temb = Dense(4 * ch, kernel_initializer=glorot, name="temb_dense1")(ops.silu(temb))
    if config.num_classes:
        labels = keras.Input((), dtype="int32", name="labels")
        inputs.append(labels)
        temb = temb + layers.Embedding(config.num_classes + 1, 4 * ch, name="class_embedding")(
            labels
        )

    def res_block(x, out_channels, block_name):
        return ResidualBlock(
            out_channels,
            config.num_groups,
            config.dropout,
            config.norm_epsilon,
            kernel_initializer,
            name=block_name,
        )([x, temb])

    def attention(x, block_name):
        return AttentionBlock(
            config.num_groups, config.norm_epsilon, kernel_initializer, name=block_name
        )(x)

    # Downsampling.
    skips = [Conv2D(ch, 3, padding="same", kernel_initializer=glorot, name="conv_in")(images)]
    for level, mult in enumerate(config.channel_multipliers):
        for block in range(config.num_res_blocks):
            h = res_block(skips[-1], ch * mult, f"down{level}_block{block}")
            if h.shape[1] in config.attention_resolutions:
                h = attention(h, f"down{level}_attn{block}")
            skips.append(h)
        if level != len(config.channel_multipliers) - 1:
            downsample = Downsample(
                skips[-1].shape[-1],
                config.downsample_padding,
                kernel_initializer,
                name=f"down{level}_downsample",
            )
            skips.append(downsample(skips[-1]))

    # Middle.
    h = skips[-1]
    h = res_block(h, h.shape[-1], "mid_block1")
    h = attention(h, "mid_attn")
    h = res_block(h, h.shape[-1], "mid_block2")

    # Upsampling.
    for level in reversed(range(len(config.channel_multipliers))):
        mult = config.channel_multipliers[level]
        for block in range(config.num_res_blocks + 1):
            h = layers.Concatenate(name=f"up{level}_concat{block}")([h, skips.pop()])
            h = res_block(h, ch * mult, f"up{level}_block{block}")
            if h.shape[1] in config.attention_resolutions:
                h = attention(h, f"up{level}_attn{block}")
        if level != 0:
            h = Upsample(h.shape[-1], kernel_initializer, name=f"up{level}_upsample")(h)

    h = GroupNormalization(config.num_groups, epsilon=config.norm_epsilon, name="norm_out")(h)
    h = layers.Activation("silu", name="act_out")(h)
    outputs = Conv2D(channels, 3, padding="same", kernel_initializer=zeros, name="conv_out")(h)
    return keras.Model(inputs, outputs, name=name)
