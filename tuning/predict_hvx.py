"""Cost model of a PrimFunc scheduled for Hexagon HVX: the CPU loop-nest model with HVX vectors.

Why reuse the CPU model: a Hexagon DSP thread running HVX code is an in-order VLIW core with
1024-bit vectors; what separates candidates (unrolling, which loop is vectorized and whether its
accesses are contiguous, accumulators kept in registers, the parallel split over HVX contexts)
is read from the loop nest exactly as for a CPU core. The HVX numbers come from the registry's
``[hexagon]`` entry (vector bytes -> fp32 lanes, HVX contexts -> parallel threads); the clock is
not in the registry (Qualcomm publishes none), so :data:`HVX_GHZ_ASSUMED` is a labelled
assumption that only scales absolute times. The candidate's HVX instruction mix in assembly
(:func:`banana.targets.hexagon.asm.hvx_instruction_stats`) is what `banana compile` reports.
"""

from __future__ import annotations

from typing import Any

from banana.tuning.predict_cpu import CoreModel

HVX_GHZ_ASSUMED = 1.0  # assumption: HVX clock ~1 GHz (not in the registry; scales times, not ranks)


def hvx_machine(soc: Any) -> CoreModel:
    """A :class:`CoreModel` for the SoC's HVX contexts (lanes = vector bytes / 4 for fp32)."""
    from banana.compiler.errors import BadConfigError

    if soc.hexagon is None:
        raise BadConfigError(f"SoC {soc.id} has no Hexagon DSP in the registry")
    return CoreModel(cores=max(1, int(soc.hexagon.hvx_contexts)), ghz=HVX_GHZ_ASSUMED,
                     fp32_lanes=max(1, int(soc.hexagon.hvx_vector_bytes) // 4),
                     dram_bytes_per_s=float(soc.dram_bandwidth_bytes_per_s))
