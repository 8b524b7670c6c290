"""By-shape projections for the DiT configs (never materialised): work, memory and latency per
resolution and precision plan, and the feasibility of published claims.

Reads ``banana.compiler.zoo.dit_layer_shapes`` (per-layer GEMM/attention shapes). Bytes per layer
are the compulsory DRAM traffic of a fused kernel: weights once, input and output activations
once; attention is counted flash-style (Q, K, V read once, O written once; no L x L score
matrix), and K/V traffic is also given as it would be without GQA (kv_heads = q_heads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from banana.compiler.report.machine import Machine

RESOLUTIONS_PX: dict[str, tuple[int, int]] = {"512": (512, 512), "1024": (1024, 1024), "2048": (2048, 2048),
                                              "4K": (2160, 3840)}
VAE_FACTOR = 8  # latent = pixels / 8 (SD-style VAE)

# precision plan -> (weight bytes per parameter, activation bytes per element, compute precision)
PLANS: dict[str, tuple[float, float, str]] = {
    "fp32": (4.0, 4.0, "fp32"),
    "fp16": (2.0, 2.0, "fp16"),
    "int8": (1.0, 1.0, "int8"),   # W8A8
    "int4": (0.5, 1.0, "int8"),   # W4A8: int4 weights unpacked to int8 for the dot products (no int4 ALU)
}


@dataclass(frozen=True)
class ShapeWork:
    flops: float
    weight_bytes: float
    activation_bytes: float
    kv_bytes_gqa: float
    kv_bytes_mha: float
    layers: int
    tokens: int

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.activation_bytes


def latent_hw(resolution: str) -> tuple[int, int]:
    h, w = RESOLUTIONS_PX[resolution]
    return h // VAE_FACTOR, w // VAE_FACTOR


def dit_work(config_name: str, resolution: str, plan: str) -> ShapeWork:
    """FLOPs and DRAM bytes of one denoising step of a DiT config at a resolution and plan."""
    from banana.compiler.zoo import DIT_CONFIGS

    return config_work(DIT_CONFIGS[config_name], latent_hw(resolution), plan)


def config_work(config: Any, latent: int | tuple[int, int] | None, plan: str) -> ShapeWork:
    """``dit_work`` for a ``DiTConfig`` object (e.g. a variant with other K/V heads) at a latent size
    (``None``: the config's own)."""
    from banana.compiler.zoo import dit_layer_shapes

    wb, ab, _ = PLANS[plan]
    layers = dit_layer_shapes(config, latent)
    flops = weights = acts = kv_gqa = kv_mha = 0.0
    tokens = 0
    for layer in layers:
        flops += layer["flops"]
        weights += layer["params"] * wb
        if layer["kind"] == "linear":
            acts += (layer["M"] * layer["K"] + layer["M"] * layer["N"]) * ab
        elif layer["kind"] == "norm":
            acts += 2 * layer["M"] * layer["N"] * ab
        else:
            b, lq, lkv, d = layer["batch"], layer["L_q"], layer["L_kv"], layer["head_dim"]
            q_o = 2 * b * lq * layer["q_heads"] * d * ab
            kv = 2 * b * lkv * layer["kv_heads"] * d * ab
            acts += q_o + kv
            kv_gqa += kv
            kv_mha += 2 * b * lkv * layer["q_heads"] * d * ab
            tokens = max(tokens, lq)
    return ShapeWork(flops, weights, acts, kv_gqa, kv_mha, len(layers), tokens)


def project(work: ShapeWork, machine: Machine, plan: str, steps: int) -> dict[str, Any]:
    """Bound and predicted latency (ms) per step and per image; predicted with tuned-kernel constants."""
    precision = PLANS[plan][2]
    peak = machine.peak(precision)
    k = machine.constants
    memory_s = work.bytes / machine.dram_bytes_per_s
    best_peak = peak.value or peak.high or None
    compute_s = work.flops / best_peak if best_peak else None
    bound_s = max(compute_s or 0.0, memory_s)
    out: dict[str, Any] = {
        "plan": plan, "compute_precision": precision, "peak_kind": peak.kind,
        "flops_per_step": work.flops, "bytes_per_step": work.bytes, "weight_bytes": work.weight_bytes,
        "bound_ms_per_step": bound_s * 1e3, "bound_ms_per_image": bound_s * steps * 1e3,
        "limited_by": "compute" if (compute_s or 0.0) >= memory_s else "memory",
        "bound_note": ("peak sourced/derived from the registry" if peak.value else
                       f"peak unknown: bound uses the optimistic end of the estimate ({peak.source})"
                       if peak.high else "peak unknown: memory term only"),
    }
    peaks = {"value": peak.value or ((peak.low * peak.high) ** 0.5 if peak.high else None),
             "low": peak.value or peak.high or None, "high": peak.value or peak.low or None}
    launch = k["parallel_launch_us"]
    times = {}
    for p, eff_pick, dram_pick in (("value", "value", "value"), ("low", "high", "high"), ("high", "low", "low")):
        if peaks[p] is None:
            times[p] = None
            continue
        compute = work.flops / (peaks[p] * getattr(k["tuned_compute_efficiency"], eff_pick))
        memory = work.bytes / (machine.dram_bytes_per_s * getattr(k["dram_efficiency"], dram_pick))
        times[p] = max(compute, memory) + work.layers * getattr(launch, p) * 1e-6
    for p, key in (("value", "predicted"), ("low", "predicted_low"), ("high", "predicted_high")):
        out[f"{key}_ms_per_step"] = None if times[p] is None else times[p] * 1e3
        out[f"{key}_ms_per_image"] = None if times[p] is None else times[p] * steps * 1e3
    return out


def claims(bound_512_ms_per_image: float, predicted_512_ms_per_image: float | None) -> dict[str, Any]:
    """Are '30 fps at 512 px' and 'sub-500 ms per image' physically possible / predicted?"""
    fps_budget_ms = 1000.0 / 30
    return {
        "30fps_at_512_physically_possible": bound_512_ms_per_image <= fps_budget_ms,
        "30fps_at_512_predicted": predicted_512_ms_per_image is not None and predicted_512_ms_per_image
        <= fps_budget_ms,
        "sub_500ms_physically_possible": bound_512_ms_per_image <= 500.0,
        "sub_500ms_predicted": predicted_512_ms_per_image is not None and predicted_512_ms_per_image <= 500.0,
    }


def dit_table(config_name: str, machines: list[Machine], plans: tuple[str, ...] = ("int8", "int4"),
              resolutions: tuple[str, ...] = ("512", "4K"), steps: int = 4) -> list[dict[str, Any]]:
    """Rows of the by-shape table: one per (machine, plan, resolution), all predicted (labelled)."""
    rows = []
    for machine in machines:
        for plan in plans:
            per_res = {}
            for res in resolutions:
                work = dit_work(config_name, res, plan)
                row = {"config": config_name, "soc": machine.soc_id, "backend": machine.backend,
                       "resolution": res, "tokens": work.tokens, "steps": steps, "kind": "predicted",
                       **project(work, machine, plan, steps)}
                per_res[res] = row
                rows.append(row)
            if "512" in per_res:
                verdict = claims(per_res["512"]["bound_ms_per_image"], per_res["512"]["predicted_ms_per_image"])
                for row in (r for r in rows if r["soc"] == machine.soc_id and r["backend"] == machine.backend
                            and r["plan"] == plan):
                    row["claims"] = verdict
    return rows
