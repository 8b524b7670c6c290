"""An untuned HVX schedule: put one data-parallel loop innermost in each block and vectorize it.

Why: without a schedule, Relax's legalized loop nests reach LLVM as scalar code wherever the innermost
loop is a reduction (matmul, conv, row reductions), and dlight's CPU rules refuse target kind
``hexagon``. Vectorizing a spatial loop to 128-byte chunks lets LLVM emit HVX (vmem, qf32 vmpy/vadd).
This is a baseline for tuning to beat, not a tuned schedule.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func

logger = logging.getLogger(__name__)

HVX_VECTOR_BYTES = 128


def _vector_factor(extent: int, lanes: int) -> int:
    """Largest divisor of ``extent`` not above ``lanes`` (no tail loop, so no predicated vectors)."""
    for factor in range(min(extent, lanes), 0, -1):
        if extent % factor == 0:
            return factor
    return 1


def _product(iters: list) -> int:
    result = 1
    for it in iters:
        result *= it.dom
    return result


def schedule_hvx(func: tirx.PrimFunc, vector_bytes: int = HVX_VECTOR_BYTES) -> tirx.PrimFunc:
    """Return ``func`` with the innermost static spatial loop of every block vectorized.

    Functions the dlight normaliser cannot read (opaque blocks, extern calls) are returned unchanged:
    LLVM's own HVX auto-vectorizer (``-hexagon-autohvx``, always on in BuildHexagon) still sees them.
    """
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return func
    for info in infos:
        block = sch.get(info.block_rv)
        if not block.writes:
            continue
        bits = block.writes[0].source.dtype.bits
        lanes = max(vector_bytes * 8 // max(bits, 8), 2)
        spatial = [it for it in info.iters if it.kind == "S" and isinstance(it.dom, int) and it.dom >= 2]
        if not spatial or any(it.kind == "O" for it in info.iters):
            continue
        # Trailing spatial loops are fused until they fill an HVX vector (NCHW conv: h*w, not w alone).
        group = [spatial[-1]]
        while len(group) < len(spatial) and _product(group) < lanes:
            group.insert(0, spatial[-1 - len(group)])
        group_loops = [it.loop_rv for it in group]
        others = [it.loop_rv for it in info.iters if all(it.loop_rv is not g for g in group_loops)]
        try:
            if [it.loop_rv for it in info.iters][-len(group):] != group_loops:
                sch.reorder(*others, *group_loops)
            fused = sch.fuse(*group_loops) if len(group_loops) > 1 else group_loops[0]
        except tvm.TVMError as err:  # a nest the schedule cannot permute: leave it to LLVM
            logger.debug("hvx schedule: cannot reorder %s: %s", info.name, err)
            continue
        extent = _product(group)
        factor = _vector_factor(extent, lanes)
        if factor < 2:
            continue
        if factor < extent:
            _, inner = sch.split(fused, factors=[None, factor])
        else:
            inner = fused
        sch.vectorize(inner)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="banana.HexagonVectorize")
def hvx_vectorize(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Apply :func:`schedule_hvx` to every unscheduled PrimFunc of a legalized Relax module."""
    updates = {}
    for gvar, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is not None and func.attrs.get(
            "tirx.is_scheduled", False
        ):
            continue
        try:
            updates[gvar] = schedule_hvx(func)
        except tvm.TVMError as err:  # one odd kernel must not stop the build: keep it unscheduled
            logger.warning("hvx schedule skipped %s: %s", gvar.name_hint, str(err).splitlines()[0])
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
