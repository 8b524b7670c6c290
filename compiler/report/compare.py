"""Side-by-side configurations of one model on one SoC: MHA vs GQA, FP16 vs INT8, and backends,
each with per-image latency, power, time to throttle, steady-state images/s and K/V traffic.

Derived by shape, never recompiled: the model's DiT config (the zoo config the artifact was built
from, else the report's by-shape config) is re-counted with ``shapes.config_work`` for every
variant — MHA is the same config with ``kv_heads = q_heads`` (the K/V projections and K/V
traffic grow by the head ratio), a plan changes the bytes per weight/activation and the compute
precision — then predicted with the same tuned-kernel roofline as the 1.8B table
(``shapes.project``) and run through the same RC thermal model (10 minutes, images back to back).
Everything here is a prediction.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from banana.compiler.report.machine import machine_for
from banana.compiler.report.shapes import RESOLUTIONS_PX, config_work, latent_hw, project
from banana.compiler.report.thermal import simulate, thermal_params, workload_power_w
from banana.targets.soc import Soc

logger = logging.getLogger(__name__)

ATTENTION = ("gqa", "mha")
PLANS = ("fp16", "int8")
PHONE_BACKENDS = ("cpu", "adreno", "hexagon")
ZOO_DIT = {"nano-dit": "nano", "nano-dit-random": "nano", "small-dit": "small"}


def model_dit_config(model_name: str, fallback: str | None) -> tuple[str | None, str]:
    """(config name, why): the artifact's own zoo DiT config when it is one, else ``fallback``."""
    short = model_name.removeprefix("zoo:")
    if short in ZOO_DIT:
        return ZOO_DIT[short], f"the artifact's own model ({short}: DiT config '{ZOO_DIT[short]}')"
    return fallback, (f"the report's by-shape DiT config '{fallback}' (the artifact's model '{short}' is not a "
                      "DiT whose shapes banana knows)" if fallback else "none")


def compare_configurations(soc: Soc, model_name: str, fallback_config: str | None, steps: int,
                           resolution: str = "512", duration_s: float = 600.0) -> dict[str, Any]:
    """The comparison section of report.json (rows: attention x plan x backend)."""
    from banana.compiler.zoo import DIT_CONFIGS

    name, why = model_dit_config(model_name, fallback_config)
    if name is None:
        return {"kind": "predicted", "config": None, "why": why, "rows": []}
    base = DIT_CONFIGS[name]
    native = name in ZOO_DIT.values()  # zoo models run at their own latent size; 1.8b at a resolution
    latent = None if native else latent_hw(resolution)
    backends = ("host",) if soc.id == "host" else PHONE_BACKENDS
    plans = ("fp32", *PLANS) if soc.id == "host" else PLANS  # the host entry has only an fp32 peak
    params = thermal_params(soc)
    rows: list[dict[str, Any]] = []
    for attention in ATTENTION:
        config = base if attention == "gqa" else dataclasses.replace(base, kv_heads=base.q_heads)
        for plan in plans:
            work = config_work(config, latent, plan)
            for backend in backends:
                machine = machine_for(soc, backend)
                p = project(work, machine, plan, steps)
                row: dict[str, Any] = {
                    "config": f"{attention.upper()} {plan.upper()} {backend}", "attention": attention,
                    "q_heads": config.q_heads, "kv_heads": config.kv_heads, "plan": plan, "backend": backend,
                    "peak_kind": p["peak_kind"], "limited_by": p["limited_by"],
                    "per_image_ms": p["predicted_ms_per_image"], "bound_ms_per_image": p["bound_ms_per_image"],
                    "kv_bytes_per_step": work.kv_bytes_gqa, "weight_bytes": work.weight_bytes,
                    "flops_per_step": work.flops, "bytes_per_step": work.bytes, "kind": "predicted",
                }
                image_ms = p["predicted_ms_per_image"]
                if image_ms is None:
                    row.update(power_w=None, time_to_throttle_s=None, steady_images_per_s=None,
                               peak_images_per_s=None, series=None, note="no peak for this backend/precision")
                else:
                    seconds = image_ms / 1e3
                    power = workload_power_w(work.flops * steps / seconds, work.bytes * steps / seconds, backend,
                                             p["compute_precision"])
                    sim = simulate(params, power, image_ms, duration_s=duration_s, dt_s=1.0)
                    row.update(power_w=power, time_to_throttle_s=sim.time_to_throttle_s,
                               steady_images_per_s=sim.steady_images_per_s, peak_images_per_s=sim.peak_images_per_s,
                               steady_latency_ms=sim.latency_ms[-1], mean_clock_fraction=sim.mean_retained_fraction,
                               series={"time_s": sim.time_s[::20], "latency_ms": sim.latency_ms[::20],
                                       "temp_c": sim.temp_c[::20]})
                rows.append(row)
    return {"kind": "predicted", "config": name, "why": why,
            "resolution": "native" if native else resolution,
            "resolution_px": None if native else list(RESOLUTIONS_PX[resolution]), "steps": steps,
            "duration_s": duration_s, "soc": soc.id,
            "method": "by shape (zoo.dit_layer_shapes), tuned-kernel roofline (shapes.project), RC thermal model; "
                      "MHA = same config with kv_heads = q_heads",
            "rows": rows}
