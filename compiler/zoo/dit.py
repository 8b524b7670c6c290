"""DiT-style latent denoiser in the Nano-Banana-2 style, from a few-M-parameter toy up to 1.8B.

The model is written so that its exports show the patterns banana's passes must recognise: GQA
self-attention as ``repeat_kv`` (expand + reshape) followed by an explicit matmul -> scale ->
softmax -> matmul chain, cross-attention to text tokens, adaLN-Zero modulation and a GELU MLP.
``attention="sdpa"`` swaps the explicit chain for ``scaled_dot_product_attention`` so the same
weights can be exported through the fused path as well.

Tensor conventions (shared with :mod:`banana.compiler.zoo.unet`):

- ``latent``: ``[B, C, H, W]`` float32, the noisy latent ``x_t = (1 - t) * x0 + t * noise``;
- ``timestep``: ``[B]`` float32 in ``[0, 1]`` (1 = pure noise); embedded as ``1000 * t``;
- ``text``: ``[B, T, D_text]`` float32 text-token embeddings (the text encoder stays outside);
- output: ``[B, C, H, W]``; for the trained ``nano`` model it is the x0 (clean latent) prediction.

The model is a pure function of its inputs with fixed input shapes, so a config at a given latent
size exports to a static ONNX graph. Configs describe models that are never materialised (1.8b):
:func:`count_params` and :func:`dit_layer_shapes` work from the config alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from banana.compiler.errors import BadConfigError

AttentionImpl = Literal["eager", "sdpa"]


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of one DiT; ``latent_size`` fixes the token count the model is built for."""

    latent_channels: int = 4
    latent_size: int = 16
    patch_size: int = 2
    hidden: int = 128
    depth: int = 4
    q_heads: int = 8
    kv_heads: int = 2
    mlp_ratio: float = 4.0
    text_tokens: int = 4
    text_dim: int = 64
    freq_dim: int = 64
    pooled_text: bool = True

    def __post_init__(self) -> None:
        if self.hidden % self.q_heads:
            raise BadConfigError(f"DiTConfig.hidden={self.hidden} is not divisible by q_heads={self.q_heads}")
        if self.q_heads % self.kv_heads:
            raise BadConfigError(f"DiTConfig.q_heads={self.q_heads} is not divisible by kv_heads={self.kv_heads}")
        if self.latent_size % self.patch_size:
            raise BadConfigError(
                f"DiTConfig.latent_size={self.latent_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.freq_dim % 2:
            raise BadConfigError(f"DiTConfig.freq_dim={self.freq_dim} must be even")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.q_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden * self.mlp_ratio)

    @property
    def tokens(self) -> int:
        return (self.latent_size // self.patch_size) ** 2

    def at_resolution(self, latent_size: int) -> DiTConfig:
        """The same network built for another latent size (e.g. 4K latents of the 1.8b model)."""
        return replace(self, latent_size=latent_size)


DIT_CONFIGS: dict[str, DiTConfig] = {
    # Trained on 16x16 digits in pixel space (1 channel): ~1 M parameters (4 MB fp32); patch 4 ->
    # 16 tokens keeps CPU training to minutes (the 16x16 images are upscaled 8x8 digits anyway).
    "nano": DiTConfig(
        latent_channels=1, latent_size=16, patch_size=4, hidden=128, depth=4, q_heads=8, kv_heads=2,
        mlp_ratio=2.0, text_tokens=4, text_dim=64, freq_dim=64,
    ),
    # Host benchmarks: 4x32x32 latent, patch 2 -> 256 tokens, hidden 384.
    "small": DiTConfig(
        latent_channels=4, latent_size=32, patch_size=2, hidden=384, depth=6, q_heads=8, kv_heads=2,
        mlp_ratio=4.0, text_tokens=16, text_dim=256, freq_dim=256,
    ),
    # Production scale, shape-only: 16x64x64 latent (512 px at /8) -> 1024 tokens, ~1.77e9 params.
    "1.8b": DiTConfig(
        latent_channels=16, latent_size=64, patch_size=2, hidden=2048, depth=22, q_heads=16, kv_heads=4,
        mlp_ratio=4.0, text_tokens=128, text_dim=2048, freq_dim=256,
    ),
}


def get_dit_config(name: str) -> DiTConfig:
    try:
        return DIT_CONFIGS[name]
    except KeyError:
        raise BadConfigError(f"unknown DiT config {name!r}; known: {', '.join(DIT_CONFIGS)}") from None


# ---------------------------------------------------------------------------------------------
# Analytic size and shape accounting (never materialises the model).


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _block_params(c: DiTConfig) -> int:
    h, kvd = c.hidden, c.kv_heads * c.head_dim
    self_attn = _linear(h, h) + 2 * _linear(h, kvd) + _linear(h, h)
    cross_attn = _linear(h, h) + 2 * _linear(c.text_dim, kvd) + _linear(h, h)
    norm_cross = 2 * h  # the only affine LayerNorm in a block
    mlp = _linear(h, c.mlp_hidden) + _linear(c.mlp_hidden, h)
    ada = _linear(h, 6 * h)
    return self_attn + cross_attn + norm_cross + mlp + ada


def count_params(config: DiTConfig) -> int:
    """Exact parameter count of ``DiT(config)`` (buffers such as the position table excluded)."""
    c, h = config, config.hidden
    patch = c.latent_channels * c.patch_size**2
    total = _linear(patch, h)  # patch-embedding conv == linear over a patch
    total += _linear(c.freq_dim, h) + _linear(h, h)  # timestep MLP
    if c.pooled_text:
        total += _linear(c.text_dim, h)
    total += c.depth * _block_params(c)
    total += _linear(h, 2 * h) + _linear(h, patch)  # final adaLN + projection
    return total


def dit_layer_shapes(config: DiTConfig, latent_hw: int | tuple[int, int] | None = None,
                     batch: int = 1) -> list[dict]:
    """Per-layer GEMM/attention shapes and FLOPs of ``config`` at a latent resolution.

    Each entry has ``name``, ``kind`` (``"linear"`` | ``"attention"`` | ``"norm"``), ``params``
    and ``flops`` (multiply-add = 2 FLOPs) and, by kind, ``M``/``N``/``K`` (``Y[M,N] = X[M,K]
    W[K,N]``) or ``L_q``/``L_kv``/``q_heads``/``kv_heads``/``head_dim``. Per-block entries appear
    once per block (``blocks.{i}.``), so sums over the list are model totals. This is what the
    report and the cost models read to talk about a 4K latent without building it.
    """
    c = config
    if latent_hw is None:
        hh = ww = c.latent_size
    elif isinstance(latent_hw, int):
        hh = ww = latent_hw
    else:
        hh, ww = latent_hw
    if hh % c.patch_size or ww % c.patch_size:
        raise BadConfigError(f"latent_hw={(hh, ww)} is not divisible by patch_size={c.patch_size}")
    L = (hh // c.patch_size) * (ww // c.patch_size)
    T, h, kvd = c.text_tokens, c.hidden, c.kv_heads * c.head_dim
    patch = c.latent_channels * c.patch_size**2
    out: list[dict] = []

    def lin(name: str, m: int, k: int, n: int, bias: bool = True) -> None:
        out.append({"name": name, "kind": "linear", "M": m, "N": n, "K": k,
                    "params": _linear(k, n, bias), "flops": 2 * m * n * k})

    def attn(name: str, lq: int, lkv: int) -> None:
        out.append({"name": name, "kind": "attention", "batch": batch, "L_q": lq, "L_kv": lkv,
                    "q_heads": c.q_heads, "kv_heads": c.kv_heads, "head_dim": c.head_dim, "params": 0,
                    "flops": batch * c.q_heads * 4 * lq * lkv * c.head_dim})

    def norm(name: str, rows: int, affine: bool) -> None:
        out.append({"name": name, "kind": "norm", "M": rows, "N": h, "params": 2 * h if affine else 0,
                    "flops": 8 * rows * h})

    BL, BT = batch * L, batch * T
    lin("patch_embed", BL, patch, h)
    lin("t_embed.0", batch, c.freq_dim, h)
    lin("t_embed.2", batch, h, h)
    if c.pooled_text:
        lin("text_pool", batch, c.text_dim, h)
    for i in range(c.depth):
        p = f"blocks.{i}."
        lin(p + "adaLN", batch, h, 6 * h)
        norm(p + "norm1", BL, False)
        lin(p + "attn.q_proj", BL, h, h)
        lin(p + "attn.k_proj", BL, h, kvd)
        lin(p + "attn.v_proj", BL, h, kvd)
        attn(p + "attn", L, L)
        lin(p + "attn.o_proj", BL, h, h)
        norm(p + "norm2", BL, True)
        lin(p + "cross.q_proj", BL, h, h)
        lin(p + "cross.k_proj", BT, c.text_dim, kvd)
        lin(p + "cross.v_proj", BT, c.text_dim, kvd)
        attn(p + "cross", L, T)
        lin(p + "cross.o_proj", BL, h, h)
        norm(p + "norm3", BL, False)
        lin(p + "mlp.fc1", BL, h, c.mlp_hidden)
        lin(p + "mlp.fc2", BL, c.mlp_hidden, h)
    lin("final.adaLN", batch, h, 2 * h)
    norm("final.norm", BL, False)
    lin("final.proj", BL, h, patch)
    return out


# ---------------------------------------------------------------------------------------------
# Modules.


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of ``1000 * t`` (t in [0, 1]) so frequencies match DDPM-style models."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = pos.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table ``[grid*grid, dim]`` (as in DiT), rebuilt from the config."""
    gy, gx = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, gy), _sincos_1d(dim // 2, gx)], dim=1)
    if emb.shape[1] < dim:  # odd quarter sizes: pad so any hidden size works
        emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.float()


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, Hkv, L, D] -> [B, Hkv*n_rep, L, D]`` written exactly like transformers' ``repeat_kv``."""
    b, hkv, length, d = x.shape
    if n_rep == 1:
        return x
    x = x[:, :, None, :, :].expand(b, hkv, n_rep, length, d)
    return x.reshape(b, hkv * n_rep, length, d)


class Attention(nn.Module):
    """GQA attention; ``kv_dim`` differs from ``hidden`` for cross-attention to text tokens."""

    def __init__(self, hidden: int, kv_dim: int, q_heads: int, kv_heads: int, impl: AttentionImpl) -> None:
        super().__init__()
        self.q_heads, self.kv_heads, self.head_dim = q_heads, kv_heads, hidden // q_heads
        self.impl = impl
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(kv_dim, kv_heads * self.head_dim)
        self.v_proj = nn.Linear(kv_dim, kv_heads * self.head_dim)
        self.o_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, lq, _ = x.shape
        lkv = context.shape[1]
        q = self.q_proj(x).view(b, lq, self.q_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(context).view(b, lkv, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(context).view(b, lkv, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.impl == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        else:
            n_rep = self.q_heads // self.kv_heads
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            w = torch.matmul(q, k.transpose(2, 3)) * (self.head_dim**-0.5)
            w = torch.softmax(w, dim=-1)
            o = torch.matmul(w, v)
        return self.o_proj(o.transpose(1, 2).reshape(b, lq, self.q_heads * self.head_dim))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, plain pre-norm cross-attention, adaLN-Zero GELU MLP."""

    def __init__(self, c: DiTConfig, impl: AttentionImpl) -> None:
        super().__init__()
        h = c.hidden
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(h, h, c.q_heads, c.kv_heads, impl)
        self.norm2 = nn.LayerNorm(h, elementwise_affine=True, eps=1e-6)
        self.cross = Attention(h, c.text_dim, c.q_heads, c.kv_heads, impl)
        self.norm3 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(h, c.mlp_hidden), nn.GELU(), nn.Linear(c.mlp_hidden, h))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN(cond).chunk(6, dim=-1)
        y = _modulate(self.norm1(x), sh1, sc1)
        x = x + g1[:, None] * self.attn(y, y)
        x = x + self.cross(self.norm2(x), text)
        return x + g2[:, None] * self.mlp(_modulate(self.norm3(x), sh2, sc2))


class DiT(nn.Module):
    """Latent denoiser ``(latent[B,C,H,W], timestep[B], text[B,T,D]) -> [B,C,H,W]``.

    PyTorch's default init is kept (not adaLN-Zero's zeros) so a seeded random model has
    non-trivial outputs for export and numerics tests; training calls :meth:`zero_init_`.
    """

    def __init__(self, config: DiTConfig, attention: AttentionImpl = "eager") -> None:
        super().__init__()
        if attention not in ("eager", "sdpa"):
            raise BadConfigError(f"DiT attention={attention!r}; expected 'eager' or 'sdpa'")
        c = self.config = config
        h, p = c.hidden, c.patch_size
        self.patch_embed = nn.Conv2d(c.latent_channels, h, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", pos_embed_2d(h, c.latent_size // p)[None], persistent=False)
        self.t_embed = nn.Sequential(nn.Linear(c.freq_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.text_pool = nn.Linear(c.text_dim, h) if c.pooled_text else None
        self.blocks = nn.ModuleList(DiTBlock(c, attention) for _ in range(c.depth))
        self.final_norm = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(h, 2 * h))
        self.final_proj = nn.Linear(h, p * p * c.latent_channels)

    def zero_init_(self) -> DiT:
        """adaLN-Zero: every residual branch and the output start at zero (training only)."""
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN[-1].weight)
            nn.init.zeros_(blk.adaLN[-1].bias)
        for mod in (self.final_adaLN[-1], self.final_proj):
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
        return self

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, ch, hh, ww = latent.shape
        p = c.patch_size
        x = self.patch_embed(latent).flatten(2).transpose(1, 2) + self.pos_embed
        cond = self.t_embed(timestep_embedding(timestep, c.freq_dim))
        if self.text_pool is not None:
            cond = cond + self.text_pool(text.mean(dim=1))
        for blk in self.blocks:
            x = blk(x, cond, text)
        shift, scale = self.final_adaLN(cond).chunk(2, dim=-1)
        x = self.final_proj(_modulate(self.final_norm(x), shift, scale))
        gh, gw = hh // p, ww // p
        x = x.reshape(b, gh, gw, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, ch, hh, ww)
