"""Fidelity of a quantized denoiser: final decoded samples vs the float model at the same seeds.

What a user sees is the last sample of the few-step sampler, after every step's quantization
error has been re-noised and fed back, so fidelity is measured there (not per layer): PSNR over
all pixels of all seeds' decoded ``uint8`` images (one MSE over the set, so one identical image
cannot make it infinite) and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, L = 255; ``valid`` region), averaged over images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from banana.compiler.quantize.calibrate import model_shapes, seed_condition
from banana.compiler.zoo import consistency_timesteps, decode, sample
from banana.compiler.zoo.sampler import Denoiser

FIDELITY_SEEDS = tuple(range(16))


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB over all elements (``inf`` when identical)."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D image with the 1-D window ``g``."""
    k = len(g)
    rows = sum(g[i] * img[i:img.shape[0] - k + 1 + i, :] for i in range(k))
    return sum(g[i] * rows[:, i:rows.shape[1] - k + 1 + i] for i in range(k))


def ssim(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM of two single-channel images ``[H, W]`` (window shrinks for images under 11 px)."""
    a, b = reference.astype(np.float64), test.astype(np.float64)
    size = min(11, a.shape[0], a.shape[1])
    g = _gaussian_window(size, 1.5 * size / 11)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = _filter(a, g), _filter(b, g)
    saa = _filter(a * a, g) - mu_a**2
    sbb = _filter(b * b, g) - mu_b**2
    sab = _filter(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2)
    return float(np.mean(num / den))


@dataclass
class FidelityResult:
    psnr_db: float
    ssim: float
    images: np.ndarray  # uint8 [N, H, W, C]

    def to_json(self) -> dict:
        return {"psnr_db": round(self.psnr_db, 3), "ssim": round(self.ssim, 5)}


def _batched_samples(denoise: nn.Module, model: nn.Module, steps: int, seeds: Sequence[int]) -> np.ndarray:
    """:func:`banana.compiler.zoo.sample` for many seeds in one batch: each row draws from its own
    ``default_rng(seed)`` in the sampler's order, so row ``i`` is the sample of ``seeds[i]``."""
    shape, _, _ = model_shapes(model)
    rngs = [np.random.default_rng(int(s)) for s in seeds]
    text = torch.from_numpy(np.concatenate([seed_condition(model, s) for s in seeds]))
    x = np.concatenate([r.standard_normal(shape, dtype=np.float32) for r in rngs])
    ts = consistency_timesteps(steps)
    x0 = x
    with torch.no_grad():
        for i, t in enumerate(ts):
            t_vec = torch.full((len(seeds),), float(t), dtype=torch.float32)
            x0 = denoise(torch.from_numpy(x), t_vec, text).numpy()
            if i + 1 < len(ts):
                tn = ts[i + 1]
                noise = np.concatenate([r.standard_normal(shape, dtype=np.float32) for r in rngs])
                x = ((1.0 - tn) * x0 + tn * noise).astype(np.float32)
    return x0


def final_samples(denoise: Denoiser | nn.Module, model: nn.Module, *, steps: int = 4,
                  seeds: Sequence[int] = FIDELITY_SEEDS) -> np.ndarray:
    """Decoded final samples ``uint8 [N, H, W, C]`` of ``denoise`` at ``seeds`` (conditions from ``model``).

    Torch modules run all seeds as one batch; numpy callables (onnxruntime) one seed at a time.
    """
    if isinstance(denoise, nn.Module):
        return decode(_batched_samples(denoise, model, steps, seeds))
    shape, _, _ = model_shapes(model)
    outs = [sample(denoise, steps=steps, seed=int(s), cond=seed_condition(model, s), shape=shape) for s in seeds]
    return decode(np.concatenate(outs))


def compare(reference: np.ndarray, images: np.ndarray) -> FidelityResult:
    s = float(np.mean([ssim(r[..., 0], t[..., 0]) for r, t in zip(reference, images, strict=True)]))
    return FidelityResult(psnr(reference, images), s, images)


def evaluate_fidelity(denoise: Denoiser | nn.Module, model: nn.Module, *, steps: int = 4,
                      seeds: Sequence[int] = FIDELITY_SEEDS, reference: np.ndarray | None = None) -> FidelityResult:
    """PSNR/SSIM of ``denoise``'s final samples vs the float ``model``'s at the same seeds."""
    if reference is None:
        reference = final_samples(model, model, steps=steps, seeds=seeds)
    return compare(reference, final_samples(denoise, model, steps=steps, seeds=seeds))


def write_grid(path: Path, rows: dict[str, np.ndarray], scale: int = 4) -> Path:
    """PNG: one row per plan (float first), one column per seed, each image upscaled ``scale``x."""
    from PIL import Image

    from banana.compiler.zoo.sampler import image_grid

    strips = [image_grid(imgs, cols=len(imgs)) for imgs in rows.values()]
    sep = np.full((2, strips[0].shape[1], strips[0].shape[2]), 128, np.uint8)
    parts = []
    for s in strips:
        parts += [s, sep]
    grid = np.concatenate(parts[:-1])
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
