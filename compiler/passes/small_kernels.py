"""Run kernels too small to repay a thread-pool fork/join on the calling thread alone.

Why: every ``T.parallel`` loop becomes a ``TVMBackendParallelLaunch``: the worker threads are woken,
each runs its share, and the caller waits for the slowest. Waking and joining costs a few
microseconds on a quiet 2-core host and far more when other processes hold the cores (the join
waits for a descheduled worker). A few-step denoiser such as ``nano-dit-random`` is ~100 kernels
of a few microseconds each (dlight's rules, banana's GEMM and attention kernels all parallelise
their outer loop whatever the size), so the launches cost more than the arithmetic: measured in
one process on this busy host (load 6-8), ``nano-dit-random`` with banana's GEMM kernels ran
10.5 ms with its parallel loops and 1.4 ms with this pass; per kernel, serial was 2-10x faster
for everything below ~1 M of work.

What: after scheduling, every PrimFunc whose estimated work (:func:`estimate_work`: TVM's FLOP
count, or the iterations of its innermost statements where that sees less) is below ``max_work`` has each
parallel loop turned into a serial one (``Schedule.fuse`` of the single loop: same iteration
order, same code inside). Larger kernels keep their parallel loops. Kernels that are not
block-based (no schedulable root block) or have symbolic extents are left as they are.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.analysis import estimate_tir_flops

logger = logging.getLogger(__name__)

#: Kernels with less work than this run serially. Two cores at most halve a kernel's time T, and the
#: launch adds L, so parallel pays only when T > 2L. Measured on the 2-core x86 host: a parallel
#: launch of an empty 2-task loop cost ~10 us more than its serial form (load 8, median), banana's
#: fp32 GEMM runs ~35 G MAC/s on one core, so 2L ~ 20 us ~ 0.7 M MACs: about 1 M of work (FLOPs or
#: iterations). Under that load no size tested (16x128x128 .. 256x512x512 GEMM, GELU 4 K..1 M,
#: layer norm) ran faster parallel, so this errs towards keeping big kernels parallel (quiet hosts
#: and phones, where the second core is free).
MAX_SERIAL_WORK = 1 << 20


def _all_blocks(sch: s_tir.Schedule) -> list[s_tir.schedule.SBlockRV]:
    """Every block below the root, parents before children."""
    blocks: list[s_tir.schedule.SBlockRV] = []
    try:
        root = sch.get_sblock("root")
    except (ValueError, RuntimeError):  # hand-written TIR without blocks (the HVX GEMM kernels)
        return blocks
    stack = list(sch.get_child_blocks(root))
    while stack:
        block = stack.pop()
        blocks.append(block)
        stack.extend(sch.get_child_blocks(block))
    return blocks


def statement_iterations(stmt: tirx.Stmt) -> int | None:
    """How many times the innermost statements of ``stmt`` run: the product of the loop extents
    around each, summed (both branches of an ``if`` counted: an upper bound); None when an extent
    is symbolic. Why not leaf blocks alone: banana's hand-written kernels (GEMM, attention) put
    one opaque block per parallel task around plain loops, so counting blocks sees 24 "iterations"
    in a 256x384x384 GEMM, and TVM's FLOP estimate cannot read their ``llvm.fmuladd`` vectors."""
    if isinstance(stmt, tirx.For):
        if not isinstance(stmt.extent, tirx.IntImm):
            return None
        inner = statement_iterations(stmt.body)
        return None if inner is None else int(stmt.extent.value) * inner
    if isinstance(stmt, tirx.SeqStmt):
        total = 0
        for child in stmt.seq:
            count = statement_iterations(child)
            if count is None:
                return None
            total += count
        return total
    if isinstance(stmt, tirx.IfThenElse):
        counts = [statement_iterations(case) for case in (stmt.then_case, stmt.else_case) if case is not None]
        return None if None in counts else sum(c for c in counts if c is not None)
    block = getattr(stmt, "block", None)  # a block realize: its block (and the block's body)
    if isinstance(block, tirx.Stmt):
        return statement_iterations(block)
    body = getattr(stmt, "body", None)
    if isinstance(body, tirx.Stmt):  # blocks, attributes, lets, buffer declarations
        return statement_iterations(body)
    return 1


def estimate_work(sch: s_tir.Schedule) -> int | None:
    """A kernel's work: TVM's FLOP estimate, or where that fails or sees less (copies, vectorised
    bodies it cannot read), the iterations of its innermost statements; None when a loop extent is
    symbolic."""
    iterations = statement_iterations(sch.mod["main"].body)
    if iterations is None:
        return None
    try:
        flops = int(estimate_tir_flops(sch.mod))
    except (ValueError, RuntimeError):  # tvm.error.InternalError is a RuntimeError
        flops = 0
    return max(flops, iterations)


def parallel_loops(sch: s_tir.Schedule) -> list[s_tir.schedule.LoopRV]:
    found: dict[tirx.For, s_tir.schedule.LoopRV] = {}
    for block in _all_blocks(sch):
        for loop in sch.get_loops(block):
            node = sch.get(loop)
            if node.kind == tirx.ForKind.PARALLEL and node not in found:
                found[node] = loop
    return list(found.values())


def serialize_if_small(func: tirx.PrimFunc, max_work: int) -> tirx.PrimFunc | None:
    """``func`` with its parallel loops made serial, or None when it is left as it is (also when it
    came from a tuning record: its schedule was measured as it is, and the default-schedule record
    that competed with it was measured serial, see banana.tuning.baseline)."""
    if func.attrs is not None and func.attrs.get("banana.tuned", False):
        return None
    try:
        sch = s_tir.Schedule(func)
    except (ValueError, RuntimeError):  # tvm.error.InternalError is a RuntimeError
        return None  # not a schedulable (block-based) function
    serial = serialized(sch, max_work)
    return None if serial is None else serial.mod["main"]


def serialized(sch: s_tir.Schedule, max_work: int) -> s_tir.Schedule | None:
    """A copy of ``sch`` (trace included) with its parallel loops made serial when its work is below
    ``max_work``; None when there is nothing to do or a loop cannot be fused. Shared by this pass
    and the tuner's default-schedule record (banana.tuning.baseline), so both serialise alike."""
    loops = parallel_loops(sch)
    if not loops:
        return None
    work = estimate_work(sch)
    if work is None or work >= max_work:
        return None
    serial = sch.copy()
    try:
        for loop in parallel_loops(serial):
            serial.fuse(loop)  # one-loop fuse: the same loop, serial
    except (ValueError, RuntimeError) as exc:
        logger.debug("kept parallel: %s", exc)
        return None
    return serial


def serialize_small_kernels(max_work: int = MAX_SERIAL_WORK) -> tvm.transform.Pass:
    """Module pass: PrimFuncs below ``max_work`` lose their parallel loops (run after scheduling)."""

    @tvm.transform.module_pass(opt_level=0, name="banana.serialize_small_kernels")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                serial = serialize_if_small(func, max_work)
                if serial is not None:
                    updates[gvar] = serial
        if not updates:
            return mod
        logger.info("%d small kernels run serially: %s", len(updates), ", ".join(g.name_hint for g in updates))
        mod = mod.clone()
        for gvar, func in updates.items():
            mod.update_func(gvar, func)
        return mod

    return _pass
