"""Roofline prediction per kernel call: a physical lower bound and a schedule-aware prediction.

``bound`` is what no code can beat on the machine: max(ops / peak ops/s, bytes / DRAM bytes/s)
with the sourced peak for the kernel's precision (memory term only when the peak is unknown).
``predicted`` (CPU backends) follows the code banana emits: each store's ops are timed by the
shape of the loop nest they run in (parallel or serial; compiler-vectorised, hand-written SIMD
intrinsics or scalar; reduction or not; see ``work.schedule_class``) with the stated constants of
``machine.CONSTANTS``, plus the per-call launch cost; the kernel takes the larger of that and its
DRAM time. Accelerator backends get a roofline with the tuned-kernel efficiency and the estimate
peak range. Every predicted figure carries ``low``/``high`` from the constants' ranges.

Each kernel is marked by what limits its *predicted* time (``limited_by``: the compute term of the
code as emitted, or its DRAM term) and, separately, by which term of the physical bound is larger
(``roofline_limited_by``): untiled scalar code is compute-limited long before an ideal kernel of the
same intensity would stop being memory-bound, and a report should show both.
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
    predicted_kind: str = "memory"  # "compute" | "memory": which term sets the *predicted* time

    @property
    def limited_by(self) -> str:
        """The kernel's mark: what limits it as predicted (code as emitted), not at the ideal roofline."""
        return self.predicted_kind

    def to_json(self) -> dict[str, Any]:
        return {"predicted_ms": self.predicted_s * 1e3, "low_ms": self.low_s * 1e3, "high_ms": self.high_s * 1e3,
                "bound_ms": self.bound_s * 1e3, "limited_by": self.predicted_kind,
                "roofline_limited_by": self.bound_kind,
                "compute_bound_ms": None if self.compute_bound_s is None else self.compute_bound_s * 1e3,
                "memory_bound_ms": self.memory_bound_s * 1e3}


def physical_bound(flops: float, nbytes: float, machine: Machine, precision: str) -> tuple[float | None, float]:
    """(compute time at the sourced peak or None if unknown, DRAM time at full bandwidth), seconds."""
    peak = machine.peak(precision)
    compute = flops / peak.value if peak.value else None
    return compute, nbytes / machine.dram_bytes_per_s


CACHE_LINE_BYTES = 64
L2_WAYS = 8  # associativity assumed for every L2 here (Zen, Cortex-A7xx: 8-way; stated, not probed)


def column_capacity_lines(stride_bytes: int, cache_bytes: int, ways: int = L2_WAYS,
                          line: int = CACHE_LINE_BYTES) -> int:
    """Lines of a strided walk a set-associative cache can hold at once.

    Addresses ``stride`` apart fall into ``sets / gcd(stride / line, sets)`` distinct sets, each
    holding ``ways`` lines: a power-of-two stride uses few sets (set aliasing), an odd one all.
    """
    import math

    sets = max(1, cache_bytes // (line * ways))
    if stride_bytes <= line:
        return sets * ways
    return (sets // math.gcd(stride_bytes // line, sets)) * ways


def scalar_mac_cycles(work: KernelWork, l2_bytes: int, constants: dict[str, float]) -> float:
    """Cycles per scalar reduction step of an untiled reduction (no register or cache tiling).

    Each output walks its reduction axis (length K) down a column of the strided operand; the
    next output reuses those K cache lines if the L2 still holds them. So the cost is the in-L2
    constant while K fits the L2's set-limited capacity for that stride, and grows by a constant
    per doubling of K beyond it (each extra doubling evicts the lines the next output needs from
    one more level of reuse). K and the stride are read from the kernel's work: K = reduction
    stores / output elements; stride = the largest operand's row (its bytes / K), i.e. the [K, N]
    weight of a matmul.
    """
    import math

    red = sum(v for k, v in work.stores_by_class.items() if k.endswith("_red"))
    k_len = max(1, red // max(1, work.out_elems))
    stride = max(4, work.largest_input_bytes // k_len)
    capacity = column_capacity_lines(stride, l2_bytes)
    base = constants["cycles_per_scalar_mac"]
    if k_len <= capacity:
        return base
    return base + constants["cycles_per_scalar_mac_per_miss_doubling"] * math.log2(k_len / capacity)


def _cpu_compute_s(work: KernelWork, machine: Machine, pick: str) -> float:
    c = {k: getattr(v, pick) for k, v in machine.constants.items()}
    for name in ("vector_efficiency", "simd_efficiency"):  # efficiencies: optimistic = their high end
        if pick == "low":
            c[name] = machine.constants[name].high
        elif pick == "high":
            c[name] = machine.constants[name].low
    par_hz = machine.threads * machine.parallel_ghz * 1e9
    ser_hz = machine.serial_ghz * 1e9
    peak = machine.peak(work.precision).value or machine.peak("fp32").value or par_hz * machine.fp32_lanes * 4
    total = 0.0
    for key, ops in work.ops_by_class.items():
        stores = work.stores_by_class.get(key, 0)
        # stores of values without arithmetic (copies, padding, packing): element by element in scalar code
        # (strided reads: a transpose; vectorised gathers are classed scalar by work.py), a vector of lanes
        # per store instruction from contiguous loads in vector code (conv padding, a GEMM's packing)
        moves = work.moves_by_class.get(key, stores if ops == 0 else 0)
        parallel, vector, reduction = key.split("_")
        hz = par_hz if parallel == "par" else ser_hz
        if vector == "scalar":  # strided reads that hit the L2 when the kernel's operands fit in half of it
            in_l2 = work.bytes <= machine.l2_bytes // 2
            total += moves * c["cycles_per_element_moved_in_l2" if in_l2 else "cycles_per_element_moved"] / hz
        else:
            total += moves * c["cycles_per_vector_move"] / hz / machine.fp32_lanes
        if ops == 0:
            continue
        if vector == "vec":
            total += ops / (peak * machine.peak_share(parallel == "par") * c["vector_efficiency"])
        elif vector == "simd":  # hand-written SIMD (explicit intrinsics): its executed ops at a share of peak
            total += ops / (peak * machine.peak_share(parallel == "par") * c["simd_efficiency"])
        elif reduction == "red":
            total += (stores - moves) * scalar_mac_cycles(work, machine.l2_bytes, c) / hz
        else:
            total += ops * c["cycles_per_scalar_op"] / hz
    return total


def predict_kernel(work: KernelWork, machine: Machine) -> Prediction:
    """Prediction for one call of ``work`` on ``machine`` (seconds)."""
    compute_bound, memory_bound = physical_bound(work.flops, work.bytes, machine, work.precision)
    bound = max(compute_bound or 0.0, memory_bound)
    k = machine.constants
    if machine.kind == "cpu":
        # a parallel loop forks only with more than one runtime thread: with one it runs inline, a serial call
        forks = work.parallel and machine.threads > 1
        launch = {p: (getattr(k["parallel_launch_us"], p) if forks else getattr(k["serial_call_us"], p)) * 1e-6
                  for p in ("value", "low", "high")}
        eff = {"value": k["dram_efficiency"].value, "low": k["dram_efficiency"].high, "high": k["dram_efficiency"].low}
        compute_s = {p: _cpu_compute_s(work, machine, p) for p in ("value", "low", "high")}
        dram_s = {p: work.bytes / (machine.dram_bytes_per_s * eff[p]) for p in ("value", "low", "high")}
        times = {p: launch[p] + max(compute_s[p], dram_s[p]) for p in ("value", "low", "high")}
    else:
        peak = machine.peak(work.precision)
        te = k["tuned_compute_efficiency"]
        mid_peak = peak.value or (peak.low * peak.high) ** 0.5 if (peak.value or peak.low) else 0.0
        peaks = {"value": mid_peak, "low": peak.value or peak.high, "high": peak.value or peak.low}
        effs = {"value": te.value, "low": te.high, "high": te.low}
        deff = {"value": k["dram_efficiency"].value, "low": k["dram_efficiency"].high, "high": k["dram_efficiency"].low}
        times, compute_s, dram_s = {}, {}, {}
        for p in ("value", "low", "high"):
            compute_s[p] = work.flops / (peaks[p] * effs[p]) if peaks[p] else 0.0
            dram_s[p] = work.bytes / (machine.dram_bytes_per_s * deff[p])
            times[p] = getattr(k["parallel_launch_us"], p) * 1e-6 + max(compute_s[p], dram_s[p])
    predicted = times["value"]
    if compute_bound is not None and compute_bound >= memory_bound:
        kind = "compute"
    else:
        kind = "memory"
    return Prediction(predicted_s=predicted, low_s=min(times.values()), high_s=max(times.values()), bound_s=bound,
                      bound_kind=kind, compute_bound_s=compute_bound, memory_bound_s=memory_bound,
                      predicted_kind="compute" if compute_s["value"] >= dram_s["value"] else "memory")
