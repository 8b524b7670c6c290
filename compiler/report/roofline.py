"""Roofline prediction per kernel call: a physical lower bound and a schedule-aware prediction.

``bound`` is what no code can beat on the machine: max(ops / peak ops/s, bytes / DRAM bytes/s)
with the sourced peak for the kernel's precision (memory term only when the peak is unknown).
``predicted`` (CPU backends) follows the code banana emits: each store's ops are timed by the
shape of the loop nest they run in (parallel or serial, vector or scalar, reduction or not; see
``work.schedule_class``) with the stated constants of ``machine.CONSTANTS``, plus the per-call
launch cost; the kernel takes the larger of that and its DRAM time. Accelerator backends get a
roofline with the tuned-kernel efficiency and the estimate peak range. Every predicted figure
carries ``low``/``high`` from the constants' ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from banana.compiler.report.machine import Machine
from banana.compiler.report.work import KernelWork


@dataclass(frozen=True)
class Prediction:
    """Predicted time of one kernel call (s), its bounds, and what limits it."""

    predicted_s: float
    low_s: float
    high_s: float
    bound_s: float
    bound_kind: str  # "compute" | "memory": which term of the physical bound is larger
    compute_bound_s: float | None
    memory_bound_s: float

    def to_json(self) -> dict[str, Any]:
        return {"predicted_ms": self.predicted_s * 1e3, "low_ms": self.low_s * 1e3, "high_ms": self.high_s * 1e3,
                "bound_ms": self.bound_s * 1e3, "limited_by": self.bound_kind,
                "compute_bound_ms": None if self.compute_bound_s is None else self.compute_bound_s * 1e3,
                "memory_bound_ms": self.memory_bound_s * 1e3}


def physical_bound(flops: float, nbytes: float, machine: Machine, precision: str) -> tuple[float | None, float]:
    """(compute time at the sourced peak or None if unknown, DRAM time at full bandwidth), seconds."""
    peak = machine.peak(precision)
    compute = flops / peak.value if peak.value else None
    return compute, nbytes / machine.dram_bytes_per_s


def _cpu_compute_s(work: KernelWork, machine: Machine, pick: str) -> float:
    c = {k: getattr(v, pick) for k, v in machine.constants.items()}
    if pick == "low":  # optimistic: the efficiency-type constants take their high end
        c["vector_efficiency"] = machine.constants["vector_efficiency"].high
    elif pick == "high":
        c["vector_efficiency"] = machine.constants["vector_efficiency"].low
    par_hz = machine.threads * machine.parallel_ghz * 1e9
    ser_hz = machine.serial_ghz * 1e9
    peak = machine.peak(work.precision).value or machine.peak("fp32").value or par_hz * machine.fp32_lanes * 4
    total = 0.0
    for key, ops in work.ops_by_class.items():
        stores = work.stores_by_class.get(key, 0)
        parallel, vector, reduction = key.split("_")
        hz = par_hz if parallel == "par" else ser_hz
        if ops == 0:  # pure data movement (copies, padding): per element, vectorised or not
            total += stores * c["cycles_per_element_moved"] / hz
        elif vector == "vec":
            rate = peak * c["vector_efficiency"] * (1.0 if parallel == "par" else 1.0 / machine.threads)
            total += ops / rate
        elif reduction == "red":
            cached = work.largest_input_bytes <= machine.l2_bytes
            total += stores * c["cycles_per_scalar_mac" if cached else "cycles_per_scalar_mac_uncached"] / hz
        else:
            total += ops * c["cycles_per_scalar_op"] / hz
    return total


def predict_kernel(work: KernelWork, machine: Machine) -> Prediction:
    """Prediction for one call of ``work`` on ``machine`` (seconds)."""
    compute_bound, memory_bound = physical_bound(work.flops, work.bytes, machine, work.precision)
    bound = max(compute_bound or 0.0, memory_bound)
    k = machine.constants
    if machine.kind == "cpu":
        launch = {p: (getattr(k["parallel_launch_us"], p) if work.parallel else getattr(k["serial_call_us"], p)) * 1e-6
                  for p in ("value", "low", "high")}
        eff = {"value": k["dram_efficiency"].value, "low": k["dram_efficiency"].high, "high": k["dram_efficiency"].low}
        times = {p: launch[p] + max(_cpu_compute_s(work, machine, p), work.bytes / (machine.dram_bytes_per_s * eff[p]))
                 for p in ("value", "low", "high")}
    else:
        peak = machine.peak(work.precision)
        te = k["tuned_compute_efficiency"]
        mid_peak = peak.value or (peak.low * peak.high) ** 0.5 if (peak.value or peak.low) else 0.0
        peaks = {"value": mid_peak, "low": peak.value or peak.high, "high": peak.value or peak.low}
        effs = {"value": te.value, "low": te.high, "high": te.low}
        deff = {"value": k["dram_efficiency"].value, "low": k["dram_efficiency"].high, "high": k["dram_efficiency"].low}
        times = {}
        for p in ("value", "low", "high"):
            compute = work.flops / (peaks[p] * effs[p]) if peaks[p] else 0.0
            times[p] = getattr(k["parallel_launch_us"], p) * 1e-6 + max(compute, work.bytes / (machine.dram_bytes_per_s
                                                                                              * deff[p]))
    predicted = times["value"]
    if compute_bound is not None and compute_bound >= memory_bound:
        kind = "compute"
    else:
        kind = "memory"
    return Prediction(predicted_s=predicted, low_s=min(times.values()), high_s=max(times.values()), bound_s=bound,
                      bound_kind=kind, compute_bound_s=compute_bound, memory_bound_s=memory_bound)
