"""An untuned HVX schedule: put one data-parallel loop innermost in each block and vectorize it.

Why: without a schedule, Relax's legalized loop nests reach LLVM as scalar code wherever the innermost
loop is a reduction (matmul, conv, row reductions), and dlight's CPU rules refuse target kind
``hexagon``. Vectorizing a spatial loop to 128-byte chunks lets LLVM emit HVX (vmem, qf32 vmpy/vadd).
This is a baseline for tuning to beat, not a tuned schedule.

A block is left scalar when vectorizing it would read an 8-bit buffer of at most 256 elements with a
vector index that is not a ramp (a gather: im2col of a quantized patch, int4 nibble unpacks): TVM
0.27's ``CodeGenHexagon::VectorLookupLoad`` turns exactly those loads into ``vlut32`` table lookups and
emits invalid LLVM IR (``llvm.hexagon.V6.vshuffb.128B(<1 x i8>)``: "Call parameter type does not match
function signature"), which fails the whole model's build. A gather gains nothing from HVX here anyway
(the vector is assembled element by element).
"""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func

logger = logging.getLogger(__name__)

HVX_VECTOR_BYTES = 128
# CodeGenHexagon::VectorLookupLoad's trigger: an 8-bit buffer with at most this many elements.
LUT_MAX_ELEMENTS = 256

# The TIR lowering up to (and including) vectorization, as tvm.compile runs it: enough to see the loads
# codegen will get. Built lazily (pass objects need the FFI registry).
_VECTORIZE_PASSES: tvm.transform.Pass | None = None


def _vectorize_passes() -> tvm.transform.Pass:
    global _VECTORIZE_PASSES
    if _VECTORIZE_PASSES is None:
        _VECTORIZE_PASSES = tvm.transform.Sequential([
            s_tir.transform.LowerInitBlock(),
            s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
            s_tir.transform.ConvertBlocksToOpaque(),
            s_tir.transform.CompactBufferAllocation(),
            s_tir.transform.LowerMatchBuffer(),
            s_tir.transform.StmtSimplify(),
            s_tir.transform.LowerOpaqueBlock(),
            tirx.transform.FlattenBuffer(),
            tirx.transform.NarrowDataType(32),
            tirx.transform.VectorizeLoop(True),
            s_tir.transform.StmtSimplify(),
        ], name="banana.HexagonVectorizeProbe")
    return _VECTORIZE_PASSES


def lut_gathers(func: tirx.PrimFunc) -> list[str]:
    """Buffers ``func`` would read through TVM's broken Hexagon vector-lookup path once lowered.

    That is: 8-bit buffers of at most :data:`LUT_MAX_ELEMENTS` elements loaded with a vector index
    that is not a ramp after vectorization (see the module docstring).
    """
    lowered = _vectorize_passes()(tvm.IRModule({"main": func}))["main"]
    found: list[str] = []

    def visit(load: tvm.ir.TensorLoad) -> None:  # a TIR BufferLoad: ``source`` is the buffer
        buffer, index = load.source, load.indices[-1]
        shape = getattr(buffer, "shape", None)
        if index.ty.dtype.lanes < 2 or isinstance(index, tirx.Ramp) or shape is None or buffer.dtype.bits != 8:
            return
        size = 1
        for dim in shape:
            if not isinstance(dim, tirx.IntImm):
                return
            size *= int(dim.value)
        if size <= LUT_MAX_ELEMENTS and buffer.name not in found:
            found.append(buffer.name)

    tvm_ffi.structural_walk(lowered.body, [(tvm.ir.TensorLoad, visit)], order="post")
    return found


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

    Each block's vectorization is tried on a copy of the schedule and kept only if :func:`lut_gathers`
    finds no small 8-bit table read by a vector gather (see the module docstring).

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
        except (RuntimeError, ValueError) as err:  # a nest the schedule cannot permute: leave it to LLVM
            logger.debug("hvx schedule: cannot reorder %s: %s", info.name, err)
            continue
        extent = _product(group)
        factor = _vector_factor(extent, lanes)
        if factor < 2:
            continue
        trial = sch.copy()
        inner = trial.split(fused, factors=[None, factor])[1] if factor < extent else fused
        trial.vectorize(inner)
        gathers = lut_gathers(trial.mod["main"])
        if gathers:  # keep this block scalar (the loop reorder/fuse above is harmless)
            logger.debug("hvx schedule: %s left scalar, vector gather from %s", info.name, gathers)
            continue
        sch = trial
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
        except (RuntimeError, ValueError) as err:  # one odd kernel must not stop the build: keep it unscheduled
            logger.warning("hvx schedule skipped %s: %s", gvar.name_hint, str(err).splitlines()[0])
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
