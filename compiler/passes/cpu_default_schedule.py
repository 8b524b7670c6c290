"""Default CPU schedule for the injective PrimFuncs dlight's CPU rules leave as serial scalar loops.

Why: TVM 0.27's dlight has only GEMV and Reduction rules for CPU, so every elementwise, broadcast,
transpose or concat kernel (GELU, the adaLN modulation, the attention head split/merge, ...) was
compiled as one serial scalar loop nest: ~27 ms of the small DiT on 2 cores. :class:`Injective`
inlines a fused kernel's intermediate blocks into its output block (one pass over memory instead
of one temporary per op), fuses the output's loops, and runs them in parallel chunks with an
innermost vector loop. It is a dlight rule, so it plugs into ``dlight.ApplyDefaultSchedule`` after
the stock rules: tuning records and already scheduled kernels (banana's own) are never touched.

Vector math: an explicit vector loop over ``T.erf`` / ``T.exp`` compiles to one scalar libm call
per lane; :mod:`banana.compiler.passes.fast_math` swaps them for polynomial forms beforehand.
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width

logger = logging.getLogger(__name__)

#: below this many output elements a kernel runs on the calling thread: waking the pool costs more
MIN_PARALLEL_ELEMENTS = 16384
#: elements per parallel task (a multiple of any vector width): big enough to amortise the task
CHUNK_ELEMENTS = 2048


def _lanes(target: Target, dtype_bits: int) -> int:
    """Vector lanes of ``dtype_bits`` elements in the target's widest SIMD register (128-bit floor)."""
    width = llvm_get_vector_width(target)
    width = 128 if width <= 0 else min(width, 256)  # 512-bit splits on AVX2-class cores: 256 is the sweet spot
    return max(1, width // max(8, dtype_bits))


def _const_extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | None:
    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


class Injective(CPUScheduleRule):
    """Parallel + vectorised schedule for PrimFuncs whose blocks are all spatial (no reduction)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(info.is_injective() for info in infos):
            return None
        infos = try_inline(sch, infos)
        for info in infos:
            if not info.is_injective() or any(kind != "S" for kind in info.dom_kind()):
                return None
        for info in infos:
            self._schedule_block(sch, info.block_rv, target)
        return sch

    @staticmethod
    def _schedule_block(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, target: Target) -> None:
        loops = sch.get_loops(block)
        if not loops:
            return
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        total = _const_extent(sch, fused)
        if total is None:  # symbolic shape: parallel only, the vector width is unknown
            sch.parallel(sch.split(fused, factors=[None, CHUNK_ELEMENTS])[0])
            return
        bits = sch.get(block).writes[0].source.dtype.bits if sch.get(block).writes else 32
        lanes = _lanes(target, bits)
        vec = lanes if total % lanes == 0 else 1
        if total >= MIN_PARALLEL_ELEMENTS:
            chunk = CHUNK_ELEMENTS if total % CHUNK_ELEMENTS == 0 else _divisor_chunk(total, vec)
            outer, inner = sch.split(fused, factors=[None, chunk])
            sch.parallel(outer)
        else:
            inner = fused
        if vec > 1:
            _, lane = sch.split(inner, factors=[None, vec])
            sch.vectorize(lane)


def _divisor_chunk(total: int, vec: int) -> int:
    """The largest multiple of ``vec`` dividing ``total`` not above :data:`CHUNK_ELEMENTS` (no tail)."""
    for chunk in range(CHUNK_ELEMENTS - CHUNK_ELEMENTS % vec, vec - 1, -vec):
        if total % chunk == 0:
            return chunk
    return vec
