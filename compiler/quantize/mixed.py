"""Per-layer mixed precision: sensitivity, a size-budgeted greedy search, and the Pareto front.

Sensitivity is measured two ways per layer: the **final-sample PSNR** vs float when only that
layer is quantized (what the user sees, ~one batched sampling run per layer), and the cheap
proxy **output SQNR** of the layer on its own calibration inputs (per precision pair). The search
models total error as the sum of per-layer noise powers, each layer's SQNR noise scaled so the
cheapest pair reproduces its measured PSNR sensitivity, then greedily buys the upgrade with the
largest predicted noise reduction per byte (bytes = :func:`~.cost.plan_size` model bytes plus
precision-conversion bytes between neighbours). The greedy path from the cheapest to the most
expensive plan is the candidate front; points along it are measured (PTQ) and the dominated ones
dropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from banana.compiler.errors import BadConfigError
from banana.compiler.quantize.calibrate import Calibration
from banana.compiler.quantize.capabilities import supported_pairs
from banana.compiler.quantize.cost import ACT_BYTES, LayerShape, layer_shapes, plan_size, weight_bytes
from banana.compiler.quantize.fakequant import BITS, LayerPrecision, QuantDenoiser, QuantLayer, StepContext
from banana.compiler.quantize.fidelity import compare, final_samples

log = logging.getLogger(__name__)


def capture_inputs(model: nn.Module, cal: Calibration, layers: Sequence[str], per_step: int = 8,
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Float inputs of every layer for ``per_step`` calibration seeds of each step, and their step index."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, a, n=n: seen[n].append(a[0].detach())) for n in layers]
    steps = []
    try:
        with torch.no_grad():
            for i, inp in enumerate(cal.inputs):
                model(*(torch.from_numpy(inp[k][:per_step]) for k in ("latent", "timestep", "text")))
                steps.append(torch.full((len(inp["timestep"][:per_step]),), i, dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}, torch.cat(steps)


def layer_sqnr(model: nn.Module, inputs: dict[str, torch.Tensor], steps: torch.Tensor, prec: LayerPrecision,
               act_ranges: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Output SQNR (dB) of each layer alone at ``prec`` on its float calibration inputs."""
    ctx = StepContext()
    ctx.step = steps
    out = {}
    with torch.no_grad():
        for name, x in inputs.items():
            inner = model.get_submodule(name)
            rng = act_ranges[name]
            layer = QuantLayer(inner, prec, ctx, rng, len(rng[0]))
            if len(rng[0]) == 1:
                ctx.step = torch.zeros_like(steps)
            y, yq = inner(x), layer(x)
            ctx.step = steps
            noise = float((y - yq).pow(2).sum())
            out[name] = 10 * math.log10(float(y.pow(2).sum()) / noise) if noise > 0 else 200.0
    return out


def layer_psnr_sensitivity(model: nn.Module, cal: Calibration, prec: LayerPrecision,
                           act_ranges: dict[str, tuple[np.ndarray, np.ndarray]], layers: Sequence[str],
                           reference: np.ndarray, seeds: Sequence[int],
                           on_progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Final-sample PSNR (dB) vs float when only one layer is quantized at ``prec``."""
    out = {}
    for i, name in enumerate(layers):
        q = QuantDenoiser(model, {name: prec}, {name: act_ranges[name]}, cal.timesteps)
        out[name] = min(compare(reference, final_samples(q, model, steps=cal.steps, seeds=seeds)).psnr_db, 99.0)
        if on_progress and ((i + 1) % 10 == 0 or i + 1 == len(layers)):
            on_progress(f"sensitivity {i + 1}/{len(layers)} layers")
    return out


@dataclass
class SearchResult:
    path: list[dict[str, LayerPrecision]]  # greedy plans, cheapest first
    sizes: list[dict[str, float]]
    predicted_psnr: list[float]
    sqnr: dict[str, dict[tuple[str, str], float]]
    sensitivity: dict[str, float]


def _pairs(backend: str | None, weights: Sequence[str] | None, acts: Sequence[str] | None) -> list[tuple[str, str]]:
    pairs = [p for p in supported_pairs(backend) if (weights is None or p[0] in weights)
             and (acts is None or p[1] in acts)]
    if not pairs:
        raise BadConfigError(f"no precision pair left for backend {backend!r} with weights {weights}, acts {acts}")
    return pairs


def greedy_search(model: nn.Module, cal: Calibration, act_ranges: dict[str, tuple[np.ndarray, np.ndarray]],
                  act_elems: dict[str, int], *, backend: str | None = None,
                  weights: Sequence[str] | None = None, acts: Sequence[str] | None = None, block: int = 0,
                  seeds: Sequence[int] = tuple(range(8)), keep_float: Sequence[str] = (),
                  on_progress: Callable[[str], None] | None = None) -> SearchResult:
    """The greedy path of plans from the cheapest supported pair per layer to the most accurate."""
    layers = [n for n in act_ranges if n not in keep_float]
    pairs = _pairs(backend, weights, acts)
    shapes: list[LayerShape] = layer_shapes(model, act_elems)

    def lp(pair: tuple[str, str]) -> LayerPrecision:
        return LayerPrecision(pair[0], pair[1], block if pair[0] == "int4" else 0)

    inputs, steps = capture_inputs(model, cal, layers)
    sqnr = {n: {} for n in layers}
    for pair in pairs:
        for n, v in layer_sqnr(model, inputs, steps, lp(pair), act_ranges).items():
            sqnr[n][pair] = v
    if on_progress:
        on_progress(f"search: SQNR of {len(layers)} layers x {len(pairs)} precision pairs")

    def bits_cost(pair: tuple[str, str]) -> tuple[int, int]:
        return BITS[pair[0]], BITS[pair[1]]

    cheapest = min(pairs, key=bits_cost)
    reference = final_samples(model, model, steps=cal.steps, seeds=seeds)
    sens = layer_psnr_sensitivity(model, cal, lp(cheapest), act_ranges, layers, reference, seeds, on_progress)
    gain = {n: 10 ** (-sens[n] / 10) / max(10 ** (-sqnr[n][cheapest] / 10), 1e-30) for n in layers}

    def noise(n: str, pair: tuple[str, str]) -> float:
        return gain[n] * 10 ** (-sqnr[n][pair] / 10)

    current = {n: cheapest for n in layers}
    fixed = {n: LayerPrecision("fp32", "fp32") for n in keep_float}

    def plan_of(cur: dict[str, tuple[str, str]]) -> dict[str, LayerPrecision]:
        return {**{n: lp(p) for n, p in cur.items()}, **fixed}

    order = [sh for sh in shapes if sh.name in current]
    pos = {sh.name: i for i, sh in enumerate(order)}

    def local_cost(cur: dict[str, tuple[str, str]], n: str) -> float:
        """Bytes that depend on layer ``n``'s pair: its weights and its two activation boundaries."""
        i = pos[n]
        c = weight_bytes(order[i], lp(cur[n]))
        for j in (i, i + 1):
            if 0 < j < len(order):
                a, b = cur[order[j - 1].name][1], cur[order[j].name][1]
                if a != b:
                    c += order[j].act_elems * (ACT_BYTES[a] + ACT_BYTES[b])
        return c

    def predicted(cur: dict[str, tuple[str, str]]) -> float:
        total = sum(noise(n, p) for n, p in cur.items())
        return 10 * math.log10(1 / total) if total > 0 else 99.0

    path, sizes, preds = [plan_of(current)], [plan_size(model, shapes, plan_of(current))], [predicted(current)]
    while True:
        best, best_ratio = None, 0.0
        for n in layers:
            here = local_cost(current, n)
            for pair in pairs:
                dn = noise(n, current[n]) - noise(n, pair)
                if dn <= 0:
                    continue
                dc = local_cost({**current, n: pair}, n) - here
                ratio = dn / max(dc, 1.0)
                if ratio > best_ratio:
                    best, best_ratio = (n, pair), ratio
        if best is None:
            break
        current[best[0]] = best[1]
        path.append(plan_of(current))
        sizes.append(plan_size(model, shapes, path[-1]))
        preds.append(predicted(current))
    if on_progress:
        on_progress(f"search: greedy path of {len(path)} plans")
    return SearchResult(path, sizes, preds, {n: {f"{k[0]}/{k[1]}": v for k, v in d.items()} for n, d in sqnr.items()},
                        sens)


def pick(result: SearchResult, *, budget_bytes: int | None = None, max_avg_bits: float | None = None) -> int:
    """Index of the most accurate greedy plan within the budget (the cheapest if none fits)."""
    best = 0
    for i, s in enumerate(result.sizes):
        if budget_bytes is not None and s["model_bytes"] + s["conversion_bytes"] > budget_bytes:
            continue
        if max_avg_bits is not None and s["avg_weight_bits"] > max_avg_bits + 1e-9:
            continue
        best = i
    return best


def pareto_front(points: list[dict]) -> list[dict]:
    """Points not dominated in (smaller ``model_bytes``, higher ``psnr_db``), sorted by size."""
    front = []
    for p in sorted(points, key=lambda p: (p["model_bytes"], -p["psnr_db"])):
        if not front or p["psnr_db"] > front[-1]["psnr_db"]:
            front.append(p)
    return front
