import numpy as np
import pytest
from keras import ops

from keras_ddpm import UNetConfig
from keras_ddpm import build_unet
from keras_ddpm import get_preset
from keras_ddpm.layers import AttentionBlock
from keras_ddpm.layers import ResidualBlock

# Parameter counts of the papers' models (DDPM: 35.7M at 32x32 and 114M at 256x256;
# DDIM's CelebA 64x64 model). The exact figures are those of the authors' architecture.
PAPER_PARAMETERS = {
    "ddpm_cifar10": 35_746_307,
    "ddim_celeba64": 78_700_803,
    "ddpm_256": 113_673_219,
}


@pytest.mark.once(lane="tensorflow")  # building the 114M-parameter network balances the lanes
@pytest.mark.parametrize("name", sorted(PAPER_PARAMETERS))
def test_paper_presets_have_the_papers_parameter_counts(name):
    assert build_unet(get_preset(name).unet).count_params() == PAPER_PARAMETERS[name]


@pytest.mark.once
def test_cifar10_layout_follows_ddpm():
    network = build_unet(get_preset("ddpm_cifar10").unet)
    blocks = [layer for layer in network.layers if isinstance(layer, ResidualBlock)]
    attention = [layer for layer in network.layers if isinstance(layer, AttentionBlock)]
    # 4 levels x 2 blocks down, 2 in the middle, 4 levels x 3 blocks up.
    assert len(blocks) == 8 + 2 + 12
    # At 16x16: 2 down, 3 up, plus the middle one at 4x4.
    assert sorted(layer.output.shape[1] for layer in attention) == [4, 16, 16, 16, 16, 16]
    assert network.get_layer("temb_dense1").units == 512
    assert {block.num_groups for block in blocks} == {32}


@pytest.mark.parametrize("num_classes", [0, 3])
def test_tiny_output_shape_and_zero_init(num_classes):
    config = get_preset("tiny").replace(num_classes=num_classes).unet
    network = build_unet(config)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 1)).astype("float32")
    inputs = [x, np.array([0, 99], "int32")] + ([np.array([0, 3], "int32")] if num_classes else [])
    output = ops.convert_to_numpy(network(inputs))
    assert output.shape == (2, 16, 16, 1)
    # The output convolution starts at zero, as in the paper's code.
    np.testing.assert_array_equal(output, 0.0)
    if num_classes:
        assert network.get_layer("class_embedding").input_dim == num_classes + 1  # + the null label
    else:
        assert len(network.inputs) == 2


@pytest.mark.once
def test_config_validation():
    with pytest.raises(ValueError, match="num_groups"):
        UNetConfig(base_channels=48, num_groups=32)
    with pytest.raises(ValueError, match="image_size"):
        UNetConfig(image_size=20)
    with pytest.raises(ValueError, match="image_channels"):
        UNetConfig(image_channels=4)
    with pytest.raises(ValueError, match="Unknown preset"):
        get_preset("ddpm_cifar100")
    with pytest.raises(ValueError, match="Unknown configuration field"):
        get_preset("tiny").replace(channels=3)


@pytest.mark.once
def test_presets_carry_the_papers_training_settings():
    cifar = get_preset("ddpm_cifar10")
    assert (cifar.train.learning_rate, cifar.train.warmup_steps, cifar.train.batch_size) == (
        2e-4,
        5000,
        128,
    )
    assert (cifar.train.ema_decay, cifar.train.grad_clip, cifar.unet.dropout) == (0.9999, 1.0, 0.1)
    assert (cifar.diffusion.timesteps, cifar.diffusion.beta_start, cifar.diffusion.beta_end) == (
        1000,
        1e-4,
        0.02,
    )
    big = get_preset("ddpm_256")
    assert (big.train.learning_rate, big.train.batch_size, big.unet.dropout) == (2e-5, 64, 0.0)
    celeba = get_preset("ddim_celeba64")
    assert celeba.unet.channel_multipliers == (1, 2, 2, 2, 4) and celeba.unet.image_size == 64
    assert celeba.unet.attention_resolutions == (16,) and celeba.unet.dropout == 0.1
