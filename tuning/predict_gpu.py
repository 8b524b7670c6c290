"""Cost model of a GPU-scheduled PrimFunc (OpenCL on Adreno): a roofline over work-items.

Why this shape: MetaSchedule's GPU candidates of one task differ in how many work-items and
work-groups they launch, how much each re-reads global memory (tiles staged in local/"shared"
memory and registers cut that), and whether neighbouring work-items read neighbouring addresses
(coalescing). Per store statement, counted over every work-item:

- arithmetic: executions x ops, at the SoC's fp32 peak scaled by occupancy (work-items launched
  against the ALU lanes that must be filled: ``peak / clock / 2`` FMA lanes);
- global traffic: accesses to global buffers not kept in registers along the innermost serial
  loops, in bytes, multiplied by the transaction waste when ``threadIdx.x`` strides over them;
- local-memory traffic at a multiple of DRAM bandwidth;
- a fixed cost per kernel launch.

Peak fp32 and clock come from the registry (``compiler.report.machine.machine_for``: sourced
figure, or its labelled estimate range when Qualcomm publishes none); DRAM bandwidth from the
registry. Constants no registry has are the labelled assumptions below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import tirx

from banana.tuning.predict_cpu import Loop, LoopNestWalker

LAUNCH_S = 5e-6  # assumption: OpenCL kernel enqueue + dispatch on a phone driver
LOCAL_BANDWIDTH_X_DRAM = 8.0  # assumption: on-chip local memory bandwidth as a multiple of DRAM's
COALESCE_BYTES = 64  # assumption: global memory transaction size
GPU_CACHE_REUSE = 4.0  # assumption: average reuse of re-read global lines in the GPU's L2 (UCHE)


@dataclass(frozen=True)
class GpuModel:
    """Numbers of one GPU: fp32 peak (op/s), clock (GHz) and DRAM bandwidth (B/s)."""

    peak_fp32_ops_per_s: float
    ghz: float
    dram_bytes_per_s: float

    @property
    def fma_lanes(self) -> float:
        """ALU lanes that must be busy to reach peak (one FMA = 2 op per lane per cycle)."""
        return self.peak_fp32_ops_per_s / (2 * self.ghz * 1e9)

    @classmethod
    def from_soc(cls, soc: Any) -> GpuModel:
        from banana.compiler.report.machine import machine_for

        peak = machine_for(soc, "adreno").peak("fp32")
        value = peak.value if peak.value is not None else math.sqrt(max(peak.low, 1.0) * max(peak.high, 1.0))
        ghz = soc.gpu.max_ghz if soc.gpu is not None and soc.gpu.max_ghz else 1.0
        return cls(float(value), float(ghz), float(soc.dram_bandwidth_bytes_per_s))


class _GpuWalker(LoopNestWalker):
    def __init__(self, gpu: GpuModel) -> None:
        super().__init__()
        self.gpu = gpu
        self.arith = 0.0
        self.global_bytes = 0.0
        self.local_bytes = 0.0
        self.work_items = 1.0
        self.tags: dict[Any, str] = {}

    def visit(self, stmt: Any, loops: list[Loop], unroll: int = 0) -> None:
        if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.THREAD_BINDING and stmt.thread_binding is not None:
            self.tags[stmt.loop_var] = str(stmt.thread_binding.thread_tag)
        super().visit(stmt, loops, unroll)

    def store(self, store: Any, loops: list[Loop]) -> None:
        accesses, arith, calls = self.accesses(store)
        executions = float(math.prod(lp.extent for lp in loops)) if loops else 1.0
        threads = [lp for lp in loops if self.tags.get(lp.var, "").startswith(("threadIdx", "blockIdx"))]
        self.work_items = max(self.work_items, float(math.prod(lp.extent for lp in threads)) if threads else 1.0)
        self.arith += executions * (arith + 8 * calls + 1)
        serial = [lp for lp in loops if lp.kind != tirx.ForKind.THREAD_BINDING]
        inner = serial[-1:] if serial else []
        tx = next((lp for lp in reversed(loops) if self.tags.get(lp.var) == "threadIdx.x"), None)
        for access in accesses:
            scope = access.buffer.scope() if hasattr(access.buffer, "scope") else "global"
            if scope == "local":
                continue  # registers
            count = executions
            if inner and all(lp.var not in access.deps for lp in inner):
                count /= math.prod(lp.extent for lp in inner)  # invariant along the inner loop: a register
            nbytes = count * access.bytes
            if scope.startswith("shared"):
                self.local_bytes += nbytes
                continue
            if tx is not None:
                stride = abs(self.stride(access, tx.var))
                if stride > 1:  # neighbouring work-items hit different transactions
                    nbytes *= min(COALESCE_BYTES / access.bytes, float(stride))
            self.global_bytes += nbytes


def predict_gpu_seconds(mod: tvm.IRModule, gpu: GpuModel) -> float:
    """Predicted run time of a GPU-scheduled single-PrimFunc module on ``gpu``."""
    walker = _GpuWalker(gpu)
    for _, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            walker.visit(func.body, [])
    occupancy = min(1.0, walker.work_items / max(gpu.fma_lanes, 1.0))
    compute = walker.arith / (gpu.peak_fp32_ops_per_s / 2 * occupancy)
    dram = walker.global_bytes / GPU_CACHE_REUSE / gpu.dram_bytes_per_s
    local = walker.local_bytes / (LOCAL_BANDWIDTH_X_DRAM * gpu.dram_bytes_per_s)
    return LAUNCH_S + max(compute, dram, local)
