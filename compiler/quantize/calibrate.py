"""Calibration along the real few-step trajectory: the exact inputs the shipped sampler feeds.

Activation ranges of a diffusion denoiser depend on the timestep, and a few-step sampler visits
only ``steps`` timesteps, so calibrating on random timesteps both wastes range on steps that
never happen and mixes the ones that do. :func:`calibrate` runs the float model through
:func:`banana.compiler.zoo.sample` for seeded latents and class conditions, records every
step's inputs and the teacher's output (DQAT's distillation targets), and keeps per-layer,
per-step input statistics (exact min/max plus a seeded subsample for percentile/MSE ranges).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from banana.compiler.errors import BadConfigError
from banana.compiler.quantize.fakequant import quantizable_layers
from banana.compiler.zoo import class_condition, consistency_timesteps, sample

log = logging.getLogger(__name__)

CALIBRATION_SEEDS = tuple(range(1000, 1064))  # disjoint from the fidelity seeds (0..)


@dataclass
class LayerStats:
    """Input statistics of one layer at one step."""

    lo: float
    hi: float
    values: np.ndarray  # seeded subsample, float32


@dataclass
class Calibration:
    """Per-step model inputs, teacher outputs and per-layer input statistics."""

    timesteps: np.ndarray  # [S]
    seeds: list[int]
    inputs: list[dict[str, np.ndarray]]  # per step: latent/timestep/text stacked over seeds
    teacher: list[np.ndarray]  # per step: float x0 prediction
    stats: dict[str, list[LayerStats]] = field(default_factory=dict)  # layer -> per step

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def pooled(self, layer: str) -> LayerStats:
        """One statistic over all steps (the single static range baseline)."""
        per = self.stats[layer]
        return LayerStats(min(s.lo for s in per), max(s.hi for s in per), np.concatenate([s.values for s in per]))


def model_shapes(model: nn.Module) -> tuple[tuple[int, int, int, int], int, int]:
    """``((1, C, H, W), text_tokens, text_dim)`` from the model's config."""
    c = getattr(model, "config", None)
    try:
        return (1, c.latent_channels, c.latent_size, c.latent_size), c.text_tokens, c.text_dim
    except AttributeError:
        raise BadConfigError(f"{type(model).__name__}: no config with latent/text sizes to calibrate with") from None


def seed_condition(model: nn.Module, seed: int) -> np.ndarray:
    """The fixed class condition used with ``seed`` (class ``seed % 10``), ``[1, T, D]``."""
    _, t, d = model_shapes(model)
    return class_condition(np.array([seed % 10]), t, d).astype(np.float32)


def trajectory_inputs(model: nn.Module, seeds: Sequence[int], steps: int) -> tuple[list[dict], list[np.ndarray]]:
    """Per step, the sampler's denoiser inputs for every seed (stacked) and the final samples."""
    shape, _, _ = model_shapes(model)
    per_step: list[list[dict]] = [[] for _ in range(steps)]
    finals = []
    for seed in seeds:
        x0, traj = sample(model, steps=steps, seed=int(seed), cond=seed_condition(model, seed), shape=shape,
                          return_trajectory=True)
        finals.append(x0)
        for i, rec in enumerate(traj):
            per_step[i].append(rec)
    stacked = [{k: np.concatenate([r[k] for r in recs]) for k in ("latent", "timestep", "text")} for recs in per_step]
    return stacked, finals


def _collect(model: nn.Module, inputs: dict[str, np.ndarray], layers: list[str], max_values: int,
             rng: np.random.Generator) -> tuple[dict[str, LayerStats], np.ndarray]:
    seen: dict[str, torch.Tensor] = {}
    hooks = []

    def hook(name: str) -> Callable:
        def fn(_mod: nn.Module, args: tuple) -> None:
            seen[name] = args[0].detach().float().reshape(-1)
        return fn

    for name in layers:
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook(name)))
    try:
        with torch.no_grad():
            out = model(*(torch.from_numpy(inputs[k]) for k in ("latent", "timestep", "text")))
    finally:
        for h in hooks:
            h.remove()
    stats = {}
    for name in layers:
        v = seen[name].numpy()
        sub = v if v.size <= max_values else v[rng.choice(v.size, max_values, replace=False)]
        stats[name] = LayerStats(float(v.min()), float(v.max()), np.sort(sub.astype(np.float32)))
    return stats, out.numpy()


def calibrate(model: nn.Module, *, steps: int = 4, seeds: Sequence[int] = CALIBRATION_SEEDS,
              max_values: int = 8192, seed: int = 0,
              on_progress: Callable[[str], None] | None = None) -> Calibration:
    """Replay the ``steps``-step sampler over ``seeds`` with the float ``model`` and collect statistics."""
    if not 1 <= steps <= 8:
        raise BadConfigError(f"calibration steps={steps}; expected 1..8")
    if len(seeds) < 1:
        raise BadConfigError("calibration needs at least one seed")
    model = model.float().eval()
    inputs, _ = trajectory_inputs(model, seeds, steps)
    layers = quantizable_layers(model)
    rng = np.random.default_rng(seed)
    cal = Calibration(consistency_timesteps(steps), [int(s) for s in seeds], inputs, [])
    cal.stats = {name: [] for name in layers}
    for i in range(steps):
        per, out = _collect(model, inputs[i], layers, max_values, rng)
        cal.teacher.append(out)
        for name in layers:
            cal.stats[name].append(per[name])
        if on_progress:
            on_progress(f"calibration step {i + 1}/{steps}: {len(seeds)} seeds, {len(layers)} layers")
    return cal
