"""Few-step (2-4) consistency-style sampler that runs any denoiser at a fixed seed.

The denoiser is either a torch module or any callable
``denoise(latent: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray`` predicting
the clean latent x0 (onnxruntime session, compiled banana artifact, ...). All randomness comes
from one ``numpy.random.default_rng(seed)`` drawn in a fixed order, so two runs with the same
seed feed the denoiser bit-identical inputs at every step and differences between backends are
the backends' own.

Noise model (rectified flow): ``x_t = (1 - t) * x0 + t * eps``, ``t`` in ``[0, 1]``, 1 = pure
noise. Step ``i`` predicts ``x0`` at ``t_i`` and re-noises it with fresh noise to ``t_{i+1}``
(multistep consistency sampling); the last prediction is the sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, overload

import numpy as np
import torch

from banana.compiler.errors import BadConfigError

Denoiser = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def consistency_timesteps(steps: int) -> np.ndarray:
    """Default schedule ``[1, ..., 1/steps]`` (e.g. 4 steps: 1, 0.75, 0.5, 0.25), float32."""
    if not 1 <= steps <= 16:
        raise BadConfigError(f"sampler steps={steps}; expected 1..16")
    return (1.0 - np.arange(steps, dtype=np.float64) / steps).astype(np.float32)


def torch_denoiser(model: torch.nn.Module) -> Denoiser:
    """Wrap a torch denoiser as a numpy callable (no grad, float32, CPU)."""

    def denoise(latent: np.ndarray, timestep: np.ndarray, text: np.ndarray) -> np.ndarray:
        args = (torch.from_numpy(np.require(a, np.float32, ["C", "W"])) for a in (latent, timestep, text))
        with torch.no_grad():
            out = model(*args)
        return out.numpy().astype(np.float32, copy=False)

    return denoise


@overload
def sample(denoise: Denoiser | torch.nn.Module, *, steps: int = ..., seed: int, cond: np.ndarray,
           shape: Sequence[int], timesteps: Sequence[float] | None = ...,
           return_trajectory: Literal[False] = ...) -> np.ndarray: ...
@overload
def sample(denoise: Denoiser | torch.nn.Module, *, steps: int = ..., seed: int, cond: np.ndarray,
           shape: Sequence[int], timesteps: Sequence[float] | None = ...,
           return_trajectory: Literal[True]) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]: ...


def sample(
    denoise: Denoiser | torch.nn.Module,
    *,
    steps: int = 4,
    seed: int,
    cond: np.ndarray,
    shape: Sequence[int],
    timesteps: Sequence[float] | None = None,
    return_trajectory: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Draw ``shape = (B, C, H, W)`` samples conditioned on text tokens ``cond``.

    ``cond`` is ``[B, T, D]`` or ``[T, D]`` / ``[1, T, D]`` (broadcast to the batch). With
    ``return_trajectory=True`` also returns, per step, the exact denoiser inputs
    ``{"latent", "timestep", "text"}`` (what quantisation calibration replays).
    """
    if isinstance(denoise, torch.nn.Module):
        denoise = torch_denoiser(denoise)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        raise BadConfigError(f"sampler shape={shape}; expected (B, C, H, W)")
    b = shape[0]
    text = np.asarray(cond, dtype=np.float32)
    if text.ndim == 2:
        text = text[None]
    if text.ndim != 3 or text.shape[0] not in (1, b):
        raise BadConfigError(f"sampler cond shape {text.shape} does not match batch {b}; expected [B,T,D]")
    text = np.array(np.broadcast_to(text, (b, *text.shape[1:])), dtype=np.float32, order="C")
    ts = consistency_timesteps(steps) if timesteps is None else np.asarray(timesteps, dtype=np.float32)
    if timesteps is not None and (ts.ndim != 1 or len(ts) == 0 or ts.max() > 1 or ts.min() <= 0):
        raise BadConfigError(f"sampler timesteps={list(timesteps)}; expected a non-empty list in (0, 1]")

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    trajectory: list[dict[str, np.ndarray]] = []
    x0 = x
    for i, t in enumerate(ts):
        t_vec = np.full((b,), t, dtype=np.float32)
        if return_trajectory:
            trajectory.append({"latent": x.copy(), "timestep": t_vec.copy(), "text": text.copy()})
        x0 = np.asarray(denoise(x, t_vec, text), dtype=np.float32)
        if x0.shape != shape:
            raise BadConfigError(f"denoiser returned shape {x0.shape}; expected {shape}")
        if i + 1 < len(ts):
            t_next = ts[i + 1]
            x = ((1.0 - t_next) * x0 + t_next * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return (x0, trajectory) if return_trajectory else x0


def decode(x: np.ndarray) -> np.ndarray:
    """Pixel-space latents ``[B, C, H, W]`` in ``[-1, 1]`` -> ``uint8`` images ``[B, H, W, C]``.

    The ``nano`` models' latent space *is* pixel space, so decoding is a clip and rescale.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise BadConfigError(f"decode expects [B,C,H,W], got shape {x.shape}")
    img = np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img.transpose(0, 2, 3, 1))


def image_grid(images: np.ndarray, cols: int) -> np.ndarray:
    """Tile ``[N, H, W, C]`` uint8 images row-major into one ``[rows*H, cols*W, C]`` image."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=images.dtype)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid
