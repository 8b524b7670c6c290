"""SD-style UNet denoiser (``nano``): the convolutional counterpart to the DiT.

GroupNorm/SiLU/Conv3x3 residual blocks with the timestep embedding added, stride-2 conv
downsampling, a mid block with self- and cross-attention to text tokens, nearest-neighbour +
conv upsampling with skip concatenation, ``conv_out``. Same call signature and tensor
conventions as :class:`banana.compiler.zoo.dit.DiT`; exports exercise Conv, GroupNormalization,
Resize and Concat, which the DiT never emits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from banana.compiler.errors import BadConfigError
from banana.compiler.zoo.dit import timestep_embedding


@dataclass(frozen=True)
class UNetConfig:
    latent_channels: int = 4
    latent_size: int = 16
    channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    groups: int = 8
    heads: int = 4
    text_tokens: int = 4
    text_dim: int = 64
    freq_dim: int = 64

    def __post_init__(self) -> None:
        for ch in self.channels:
            if ch % self.groups:
                raise BadConfigError(f"UNetConfig.channels={self.channels} not divisible by groups={self.groups}")
        if self.channels[-1] % self.heads:
            raise BadConfigError(f"UNetConfig.channels[-1]={self.channels[-1]} not divisible by heads={self.heads}")
        if self.latent_size % 2 ** (len(self.channels) - 1):
            raise BadConfigError(f"UNetConfig.latent_size={self.latent_size} too small for {self.channels}")

    @property
    def time_dim(self) -> int:
        return 4 * self.channels[0]


UNET_CONFIGS: dict[str, UNetConfig] = {
    "nano": UNetConfig(latent_channels=4, latent_size=16, channels=(32, 64), layers_per_block=1, groups=8,
                       heads=4, text_tokens=4, text_dim=64, freq_dim=64),
}


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, time_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=1e-5)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(time_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=1e-5)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """SD's transformer block reduced to self-attention + cross-attention (heads x head_dim)."""

    def __init__(self, ch: int, heads: int, text_dim: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.ln1 = nn.LayerNorm(ch)
        self.q1, self.k1, self.v1, self.o1 = (nn.Linear(ch, ch) for _ in range(4))
        self.ln2 = nn.LayerNorm(ch)
        self.q2, self.o2 = nn.Linear(ch, ch), nn.Linear(ch, ch)
        self.k2, self.v2 = nn.Linear(text_dim, ch), nn.Linear(text_dim, ch)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def _attn(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, lq, ch = q.shape
        d = ch // self.heads
        q = q.view(b, lq, self.heads, d).transpose(1, 2)
        k = k.view(b, k.shape[1], self.heads, d).transpose(1, 2)
        v = v.view(b, v.shape[1], self.heads, d).transpose(1, 2)
        w = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * d**-0.5, dim=-1)
        return torch.matmul(w, v).transpose(1, 2).reshape(b, lq, ch)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, ch, hh, ww = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        y = self.ln1(h)
        h = h + self.o1(self._attn(self.q1(y), self.k1(y), self.v1(y)))
        y = self.ln2(h)
        h = h + self.o2(self._attn(self.q2(y), self.k2(text), self.v2(text)))
        h = h.transpose(1, 2).reshape(b, ch, hh, ww)
        return x + self.proj_out(h)


class UNet(nn.Module):
    """``(latent[B,C,H,W], timestep[B], text[B,T,D]) -> [B,C,H,W]`` SD-style UNet."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        c = self.config = config
        chs, g, td = c.channels, c.groups, c.time_dim
        self.t_embed = nn.Sequential(nn.Linear(c.freq_dim, td), nn.SiLU(), nn.Linear(td, td))
        self.conv_in = nn.Conv2d(c.latent_channels, chs[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_chs = [chs[0]]
        ch = chs[0]
        for i, co in enumerate(chs):
            level = nn.ModuleList()
            for _ in range(c.layers_per_block):
                level.append(ResBlock(ch, co, td, g))
                ch = co
                skip_chs.append(ch)
            self.down.append(level)
            if i + 1 < len(chs):
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chs.append(ch)
        self.mid1 = ResBlock(ch, ch, td, g)
        self.mid_attn = AttnBlock(ch, c.heads, c.text_dim, g)
        self.mid2 = ResBlock(ch, ch, td, g)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, co in reversed(list(enumerate(chs))):
            level = nn.ModuleList()
            for _ in range(c.layers_per_block + 1):
                level.append(ResBlock(ch + skip_chs.pop(), co, td, g))
                ch = co
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = nn.Conv2d(ch, c.latent_channels, 3, padding=1)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        temb = self.t_embed(timestep_embedding(timestep, self.config.freq_dim))
        h = self.conv_in(latent)
        skips = [h]
        for i, level in enumerate(self.down):
            for blk in level:
                h = blk(h, temb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb), text), temb)
        for i, level in enumerate(self.up):
            for blk in level:
                h = blk(torch.cat([h, skips.pop()], dim=1), temb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
