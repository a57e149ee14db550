"""keras_ddpm.convert.pytorch_ddpm: seed 000's (KimRass/DDPM) and w86763777/pytorch-ddpm's
checkpoints, against a PyTorch UNet written here after their unet.py / model.py (module names
and all), so the state dicts the tests convert are the ones their code saves."""

import math

import numpy as np
import pytest
import torch
from convert_testing import inputs
from convert_testing import keras_output
from torch import nn
from torch.nn import functional as F

from keras_ddpm import load_model
from keras_ddpm.convert import convert
from keras_ddpm.convert import pytorch_ddpm
from keras_ddpm.convert import read


class TimeEmbedding(nn.Module):
    def __init__(self, max_len, d_model, dim):
        super().__init__()
        frequencies = torch.exp(-torch.arange(0, d_model, step=2) / d_model * math.log(10000))
        angles = torch.arange(max_len).float()[:, None] * frequencies[None, :]
        table = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).view(max_len, d_model)
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(table),
            nn.Linear(d_model, dim),
            nn.SiLU(),
            nn.Linear(dim, dim),
        )

    def forward(self, t):
        return self.timembedding(t)


class DownSample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.main = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, temb):
        return self.main(x)


class UpSample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.main = nn.Conv2d(channels, channels, 3, stride=1, padding=1)

    def forward(self, x, temb):
        return self.main(F.interpolate(x, scale_factor=2, mode="nearest"))


class AttnBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.group_norm = nn.GroupNorm(32, channels)
        self.proj_q, self.proj_k, self.proj_v, self.proj = (
            nn.Conv2d(channels, channels, 1) for _ in range(4)
        )

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.group_norm(x)
        q = self.proj_q(y).permute(0, 2, 3, 1).reshape(b, h * w, c)
        k = self.proj_k(y).reshape(b, c, h * w)
        v = self.proj_v(y).permute(0, 2, 3, 1).reshape(b, h * w, c)
        weights = F.softmax(torch.bmm(q, k) * c**-0.5, dim=-1)
        return x + self.proj(torch.bmm(weights, v).reshape(b, h, w, c).permute(0, 3, 1, 2))


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, tdim, attn=False):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.GroupNorm(32, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(
            nn.GroupNorm(32, out_ch),
            nn.SiLU(),
            nn.Dropout(0.1),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch) if attn else nn.Identity()

    def forward(self, x, temb):
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        return self.attn(self.block2(h) + self.shortcut(x))


class UNet(nn.Module):
    """seed 000's UNet (attention at the level indices `attn`, inside the ResBlocks)."""

    def __init__(self, ch=32, ch_mult=(1, 2, 2, 2), attn=(1,), num_res_blocks=1):
        super().__init__()
        tdim = ch * 4
        self.time_embedding = TimeEmbedding(1000, ch, tdim)
        self.head = nn.Conv2d(3, ch, 3, padding=1)
        self.downblocks, channels, now = nn.ModuleList(), [ch], ch
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.downblocks.append(ResBlock(now, ch * mult, tdim, attn=i in attn))
                now = ch * mult
                channels.append(now)
            if i != len(ch_mult) - 1:
                self.downblocks.append(DownSample(now))
                channels.append(now)
        self.middleblocks = nn.ModuleList(
            [ResBlock(now, now, tdim, True), ResBlock(now, now, tdim)]
        )
        self.upblocks = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(
                    ResBlock(channels.pop() + now, ch * mult, tdim, attn=i in attn)
                )
                now = ch * mult
            if i != 0:
                self.upblocks.append(UpSample(now))
        self.tail = nn.Sequential(nn.GroupNorm(32, now), nn.SiLU(), nn.Conv2d(now, 3, 3, padding=1))

    def forward(self, x, t):
        temb = self.time_embedding(t)
        h = self.head(x)
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            h = layer(torch.cat([h, hs.pop()], dim=1) if isinstance(layer, ResBlock) else h, temb)
        return self.tail(h)


class DDPM(nn.Module):
    """seed 000's wrapper: its published .pth files are this module's state dict (model.*)."""

    def __init__(self, model):
        super().__init__()
        self.model = model


@pytest.fixture(scope="module")
def seed000():
    torch.manual_seed(3)
    unet = UNet().eval()
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if (
                "norm" in name
                or name.startswith("tail.0")
                or ".block1.0" in name
                or ".block2.0" in name
            ):
                parameter.add_(0.2 * torch.randn_like(parameter))
    return unet


def seed000_output(unet, x, t):
    with torch.no_grad():
        out = unet(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t).long())
    return out.permute(0, 2, 3, 1).numpy()


def test_seed000_celeba_64_matches_its_unet(seed000, tmp_path):
    """Its 64x64 model: attention at level 1 is 32x32; the size comes from the file's name."""
    path = tmp_path / "ddpm_celeba_64\u00d764.pth"
    torch.save(DDPM(seed000).state_dict(), path)
    model = convert(str(path))
    unet = model.config.unet
    assert (unet.image_size, unet.channel_multipliers, unet.attention_resolutions) == (
        64,
        (1, 2, 2, 2),
        (32,),
    )
    assert (unet.timestep_embedding, unet.downsample_padding, unet.norm_epsilon) == (
        "interleaved",
        "symmetric",
        1e-5,
    )
    diffusion = model.config.diffusion
    assert (diffusion.variance, diffusion.clip_denoised, diffusion.timesteps) == (
        "fixed_large",
        False,
        1000,
    )
    assert model.network.count_params() == sum(
        p.numel()
        for n, p in seed000.named_parameters()
        if not n.startswith("time_embedding.timembedding.0")
    )
    x, t = inputs(64)
    expected = seed000_output(seed000, x, t)
    assert np.abs(expected).max() > 0.5
    assert np.abs(keras_output(model, x, t) - expected).max() <= 1e-4


@pytest.mark.once
def test_the_options_survive_a_keras_file(seed000, tmp_path):
    """timestep_embedding, downsample_padding and norm_epsilon round-trip through .keras."""
    path = tmp_path / "ddpm_celeba_64x64.pth"
    torch.save(DDPM(seed000).state_dict(), path)
    model = convert(str(path))
    model.save(str(tmp_path / "seed000.keras"))
    loaded = load_model(str(tmp_path / "seed000.keras"))
    assert loaded.config == model.config
    x, t = inputs(64, batch=1)
    expected = seed000_output(seed000, x, t)
    assert np.abs(keras_output(loaded, x, t) - expected).max() <= 1e-4


@pytest.mark.once
def test_each_container_reads_the_same_weights(seed000, tmp_path):
    state = seed000.state_dict()
    published = tmp_path / "ddpm_celeba_32x32.pth"
    torch.save(DDPM(seed000).state_dict(), published)
    run = tmp_path / "ckpt.pth"
    torch.save(
        {
            "epoch": 3,
            "model": DDPM(seed000).state_dict(),
            "optimizer": {"state": {}},
            "min_val_loss": 0.03,
        },
        run,
    )
    w86 = tmp_path / "ckpt.pt"
    ema = {k: v * 0.5 for k, v in state.items()}
    torch.save({"net_model": state, "ema_model": ema, "step": 10, "x_T": torch.zeros(1)}, w86)
    first = read(str(published))
    assert first.unet.image_size == 32 and first.ema_weights is None
    second = read(str(run), image_size=32)
    assert "seed 000 ckpt.pth" in second.source
    third = read(str(w86))
    assert third.unet.image_size == 32  # w86763777's CIFAR-10
    for checkpoint in (second, third):
        assert all(np.array_equal(checkpoint.weights[k], v) for k, v in first.weights.items())
    assert all(np.allclose(third.ema_weights[k], 0.5 * v) for k, v in first.weights.items())


@pytest.mark.once
def test_a_file_without_its_image_size_asks_for_it(seed000, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(DDPM(seed000).state_dict(), path)
    with pytest.raises(
        ValueError, match=r"model\.pth does not record its image size; pass .*--image-size"
    ):
        read(str(path))
    assert read(str(path), image_size=64).unet.attention_resolutions == (32,)


@pytest.mark.once
def test_a_different_timestep_table_is_refused(seed000, tmp_path):
    state = DDPM(seed000).state_dict()
    state["model.time_embedding.timembedding.0.weight"] = (
        state["model.time_embedding.timembedding.0.weight"] * 1.01
    )
    path = tmp_path / "ddpm_32x32.pth"
    torch.save(state, path)
    with pytest.raises(
        ValueError, match="timestep table is not w86763777/pytorch-ddpm's sinusoidal one"
    ):
        read(str(path))


@pytest.mark.once
def test_the_interleaved_table_is_the_layers_embedding():
    """The table the file carries is what `timestep_embedding="interleaved"` computes."""
    from keras import ops

    from keras_ddpm.layers import SinusoidalEmbedding

    t = np.array([0, 1, 500, 999], np.int32)
    embedded = ops.convert_to_numpy(SinusoidalEmbedding(32, "interleaved")(t))
    assert np.abs(embedded - pytorch_ddpm.interleaved_table(1000, 32)[t]).max() < 2e-4
