"""Default CPU schedule for row reductions with an elementwise epilogue (layer/RMS/group norm, softmax).

Why: dlight's CPU ``Reduction`` rule (TVM 0.27) keeps every reduction a serial scalar chain
(``sum = sum + x[i]``): without fast-math LLVM may not reassociate the float adds, so a 384-wide
row costs ~384 dependent adds (4 cycles each) per pass, and layer norm makes two passes (mean,
variance). On ``small-dit`` the adaLN kernel ``LN(x) * (1 + scale) + shift`` ([1,256,384] fp32) ran
~0.25 ms per call (~2.5 ns per element) where the memory traffic takes ~20 us. The same rule also
recomputes the broadcast operands (``1 + scale``) once per row and keeps a full-size temporary per
epilogue op.

What :class:`RowReduction` does, for PrimFuncs whose blocks (after inlining the injective ones) are
reductions over the trailing axes of a row, followed by an injective output block over the same
rows plus trailing element axes:

* every reduction is split into ``F`` interleaved partial sums (``rfactor``; ``F`` a multiple of the
  target's vector lanes, up to 4 vectors so the adds of consecutive vectors overlap), the partial
  sums are accumulated with vector adds and folded into the row's scalar result at the end. The
  summation order changes (F partial sums instead of one running sum): that is as accurate or more
  (shorter chains), still fp32, and the mean/variance stay two-pass as TOPI wrote them;
* the epilogue (normalise, affine, adaLN modulation) is inlined into the output block, which is
  vectorised over the row's trailing axes;
* the rows are the outer loop, parallel when the kernel is big enough (banana's
  ``serialize_small_kernels`` runs small ones serially anyway).

It runs before dlight's ``Reduction`` rule, which keeps the kernels this one declines (symbolic
shapes, reductions over a non-innermost axis, extents no vector divides).
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func
from tvm.s_tir.dlight.base import try_inline
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target
from tvm.tirx.analysis import undefined_vars

from banana.compiler.passes.cpu_default_schedule import MIN_PARALLEL_ELEMENTS, _const_extent, _lanes

logger = logging.getLogger(__name__)

#: partial sums per reduction, in vectors: 4 independent vector adds in flight cover the add latency
MAX_PARTIAL_VECTORS = 4


def _leading_spatial(dom_kind: str) -> int:
    return len(dom_kind) - len(dom_kind.lstrip("S"))


def _reads_innermost(sch: s_tir.Schedule, info: SBlockInfo) -> bool:
    """Whether the block's innermost reduction axis indexes the last dimension of a buffer it reads:
    the partial sums then load contiguous vectors (a reduction over an outer axis would gather)."""
    block = sch.get(info.block_rv)
    var = block.iter_vars[-1].var
    for region in block.reads:
        if region.region and any(v.same_as(var) for v in undefined_vars(region.region[-1].min)):
            return True
    return False


class RowReduction(CPUScheduleRule):
    """Vector partial sums + vectorised epilogue for row reductions (see the module docstring)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or len(infos) < 2 or all(info.is_injective() for info in infos):
            return None
        try:
            return self._schedule(sch, infos, target)
        except (ValueError, RuntimeError) as exc:  # ScheduleError is a RuntimeError: leave it to dlight
            logger.debug("row reduction schedule declined: %s", exc)
            return None

    def _schedule(self, sch: s_tir.Schedule, infos: list[SBlockInfo], target: Target) -> s_tir.Schedule | None:
        infos = try_inline(sch, infos)
        rows = self._row_axes(sch, infos)
        if rows is None:
            return None
        last = infos[-1]
        bits = sch.get(last.block_rv).writes[0].source.dtype.bits if sch.get(last.block_rv).writes else 32
        lanes = _lanes(target, bits)
        # row-major element axes of the output must split into whole vectors: checked before any change
        out_loops = sch.get_loops(last.block_rv)
        inner_total = 1
        for loop in out_loops[rows:]:
            extent = _const_extent(sch, loop)
            if extent is None:
                return None
            inner_total *= extent
        if inner_total % lanes:
            return None
        # 1. partial sums, before the blocks move under the row loop (rfactor needs its block alone)
        partial_blocks: list[s_tir.schedule.SBlockRV] = []
        for info in infos[:-1]:
            if info.is_injective():
                continue
            rf = self._rfactor(sch, info.block_rv, rows, lanes)
            if rf is None:
                return None
            partial_blocks.append(rf)
        # 2. rows outermost: everything computed per row under the output's row loop
        out_loops = sch.get_loops(last.block_rv)
        row = sch.fuse(*out_loops[:rows]) if rows > 1 else out_loops[0]
        n_rows = _const_extent(sch, row)
        element_loops = sch.get_loops(last.block_rv)[1:]
        element = sch.fuse(*element_loops) if len(element_loops) > 1 else element_loops[0]
        _, lane = sch.split(element, factors=[None, lanes])
        sch.vectorize(lane)
        for block in reversed(self._producers(sch, last.block_rv)):
            sch.compute_at(block, row, preserve_unit_loops=True)
        if n_rows is not None and n_rows > 1 and n_rows * inner_total >= MIN_PARALLEL_ELEMENTS:
            sch.parallel(row)  # before decompose_reduction: the check wants whole reduction blocks
        # 3. vectors inside each row
        for block in partial_blocks:
            self._vectorize_partial(sch, block, lanes)
        for info in infos[:-1]:
            if info.is_injective():
                self._vectorize_spatial(sch, info.block_rv, lanes)
        return sch

    @staticmethod
    def _row_axes(sch: s_tir.Schedule, infos: list[SBlockInfo]) -> int | None:
        """How many leading axes are the rows, or None when the kernel is not a row reduction."""
        if len(infos) < 2 or not infos[-1].is_injective():
            return None
        reductions = [info for info in infos if not info.is_injective()]
        if not reductions:
            return None
        rows = None
        row_dom: list[int] | None = None
        for info in reductions:
            kind = info.dom_kind()
            n = _leading_spatial(kind)
            if n == 0 or kind[n:].strip("R") or not _reads_innermost(sch, info):
                return None
            dom = [int(d) if isinstance(d, int | tirx.IntImm) else None for d in info.dom()[:n]]
            if None in dom:
                return None
            if rows is None:
                rows, row_dom = n, dom  # type: ignore[assignment]
            elif n != rows or dom != row_dom:
                return None
        assert rows is not None and row_dom is not None
        for info in infos:
            kind = info.dom_kind()
            if not info.is_injective():
                continue
            if any(k != "S" for k in kind) or len(kind) < rows:
                return None
            dom = [int(d) if isinstance(d, int | tirx.IntImm) else None for d in info.dom()[:rows]]
            if dom != row_dom:
                return None
        if len(infos[-1].dom_kind()) <= rows:  # the output has no element axes: a plain reduction
            return None
        return rows

    @staticmethod
    def _rfactor(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, rows: int,
                 lanes: int) -> s_tir.schedule.SBlockRV | None:
        loops = sch.get_loops(block)
        red = loops[rows:]
        fused = sch.fuse(*red) if len(red) > 1 else red[0]
        extent = _const_extent(sch, fused)
        if extent is None:
            return None
        factor = next((lanes * v for v in range(MAX_PARTIAL_VECTORS, 0, -1) if extent % (lanes * v) == 0), None)
        if factor is None or factor >= extent:
            return None
        _, inner = sch.split(fused, factors=[None, factor])
        try:
            return sch.rfactor(inner, factor_axis=len(sch.get(block).writes[0].region))
        except (ValueError, RuntimeError) as exc:  # not a commutative reducer TVM knows
            logger.debug("no rfactor: %s", exc)
            return None

    @staticmethod
    def _producers(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> list[s_tir.schedule.SBlockRV]:
        """All blocks before ``block`` under the root, in program order."""
        result: list[s_tir.schedule.SBlockRV] = []
        for child in sch.get_child_blocks(sch.get_sblock("root")):
            if sch.get(child).same_as(sch.get(block)):
                break
            result.append(child)
        return result

    @staticmethod
    def _vectorize_partial(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
        """The partial-sum block: after ``compute_at`` its loops under the row loop follow its block
        vars (one loop each, unit loops kept); the partial-sum axis is the last index of the buffer
        it writes. Move that loop innermost (under the reduction) and make it vector adds."""
        stmt = sch.get(block)
        rf_var = stmt.writes[0].region[-1].min
        position = next(i for i, iv in enumerate(stmt.iter_vars) if iv.var.same_as(rf_var))
        loops = sch.get_loops(block)
        per_var = loops[len(loops) - len(stmt.iter_vars):]
        rf_loop = per_var[position]
        reduce_loops = [loop for iv, loop in zip(stmt.iter_vars, per_var, strict=True)
                        if iv.iter_type == tirx.IterVar.CommReduce]
        sch.reorder(*reduce_loops, rf_loop)
        vec_outer, vec = sch.split(rf_loop, factors=[None, lanes])
        sch.vectorize(vec)  # before the init moves out: the check wants a whole reduction block
        if (_const_extent(sch, vec_outer) or 1) > 1:
            sch.unroll(vec_outer)
        sch.decompose_reduction(block, reduce_loops[0])

    @staticmethod
    def _vectorize_spatial(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int) -> None:
        loops = sch.get_loops(block)[1:]
        if not loops:
            return
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = _const_extent(sch, fused)
        if extent is not None and extent % lanes == 0 and extent > 1:
            _, lane = sch.split(fused, factors=[None, lanes])
            sch.vectorize(lane)
