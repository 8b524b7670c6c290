"""Cost model of a scheduled PrimFunc on CPU cores (x86 host, arm64 big cores; Hexagon reuses it).

Why a model of the loop nest rather than of the source: what separates MetaSchedule candidates
of one task is how their loops map onto a core, so the model reads the scheduled TIR the way
LLVM will see it. Per store statement:

- which loops are unrolled (``pragma_auto_unroll_max_step``: a loop whose nest below holds at most
  that many steps is flattened; then LLVM's own full unrolling of small constant-trip loops),
  which one is LLVM's hot loop (innermost loop left), and how many lanes each access uses: an
  explicitly vectorized loop, or LLVM's own loop vectorizer on a hot spatial loop, or its SLP
  vectorizer on an unrolled one, when the accesses along it are all contiguous or invariant;
- per access: contiguous vector load, broadcast, or gather (one scalar load per lane); accesses
  (and whole statements) invariant along the hot loop and the straight-line code inside it are
  hoisted (LICM); in straight-line code a value is loaded once (GVN) and an accumulator is
  forwarded in a register, except along loops LLVM unrolls itself when the accumulator is a
  buffer LLVM cannot tell apart from the others (see :func:`register_buffers`);
- arithmetic as LLVM emits it: index expressions are addressing, not work, and a multiply
  feeding an add is one fused multiply-add;
- throughput: loads, stores, arithmetic and loop overhead against the core's ports;
- latency: fp adds are not reassociated, so a reduction is one dependent chain per accumulator:
  FMA_LATENCY per update in a register, plus STORE_FORWARD_LATENCY when the accumulator goes
  through memory; only independent accumulators overlap, as many as the out-of-order window
  (WINDOW_UOPS) holds in loop order;
- memory: distinct bytes after reuse in L1, at L2 bandwidth, or DRAM bandwidth past the LLC;
- parallel loops divide the work over ``cores`` (with the load imbalance of a static split)
  and cost a fork/join per entry.

Machine numbers (cores, clock, SIMD width, DRAM bandwidth) come from the SoC registry or the
host description; micro-architectural constants no registry holds are the labelled assumptions
below, the same for every candidate, so they move absolute times, not the ranking much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx

L1_BYTES = 32 * 1024  # assumption: 32-64 KiB L1D on the cores we target; the smaller bound
LLC_BYTES = 4 * 1024 * 1024  # assumption: last-level cache beyond which traffic goes to DRAM
L2_BYTES_PER_CYCLE = 32  # assumption: one 64 B line per 2 cycles per core from L2
ISSUE_WIDTH = 4  # assumption: sustained instructions per cycle per core (Zen3, Cortex-X/A7xx: 4-8)
LOAD_PORTS = 2  # assumption: loads per cycle per core
VECTOR_PORTS = 2  # assumption: FP/SIMD arithmetic per cycle per core
STORE_PORTS = 1  # assumption: stores per cycle per core
FMA_LATENCY = 4  # assumption: cycles of a dependent FP multiply-add (3-4 on these cores)
STORE_FORWARD_LATENCY = 5  # assumption: cycles from a store to a load of the same address (4-5 on these cores)
WINDOW_UOPS = 224  # assumption: out-of-order window (reorder buffer) in micro-ops (Zen2/3: 224-256, Cortex-X: ~300)
LLVM_FULL_UNROLL_SIZE = 300  # LLVM's full-unroll threshold at -O3 (-unroll-threshold), in IR instructions
LOOP_OVERHEAD = 1.0  # assumption: instructions per iteration of a loop LLVM keeps (inc+cmp+branch fused)
PARALLEL_REGION_S = 5e-6  # assumption: fork/join of TVM's thread pool per parallel loop entry
CALL_S = 0.3e-6  # assumption: one packed-function call


@dataclass(frozen=True)
class CoreModel:
    """The machine numbers the cost model needs, from a ``Soc`` (sourced) or assumptions above."""

    cores: int
    ghz: float
    fp32_lanes: int
    dram_bytes_per_s: float

    @classmethod
    def from_soc(cls, soc: Any, backend: str) -> CoreModel:
        big = [c for c in soc.clusters if not c.efficiency] or list(soc.clusters)
        ghz = max(c.max_ghz for c in big)
        cores = soc.big_cores if backend != "host" else sum(c.count for c in big)
        lanes = 4  # 128-bit NEON (arm64 cpu backend)
        if backend == "host":
            feats = set(soc.cpu_features)
            lanes = 16 if "avx512f" in feats else 8 if ("avx2" in feats or "avx" in feats) else 4
        return cls(cores=max(1, int(cores)), ghz=float(ghz) if ghz == ghz else 2.0, fp32_lanes=lanes,
                   dram_bytes_per_s=float(soc.dram_bandwidth_bytes_per_s))


@dataclass
class Loop:
    var: Any
    extent: int
    kind: Any
    unroll_max_step: int  # from the closest enclosing pragma_auto_unroll_max_step (0: none)


_BINARY = {
    tirx.Add: lambda a, b: a + b,
    tirx.Sub: lambda a, b: a - b,
    tirx.Mul: lambda a, b: a * b,
    tirx.FloorDiv: lambda a, b: a // b if b else 0,
    tirx.FloorMod: lambda a, b: a % b if b else 0,
    tirx.Div: lambda a, b: int(a / b) if b else 0,
    tirx.Mod: lambda a, b: a - b * int(a / b) if b else 0,
    tirx.Min: min,
    tirx.Max: max,
}
ARITH = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.FloorDiv, tirx.FloorMod, tirx.Max, tirx.Min)


def _int(value: Any, default: int = 1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def evaluate_index(expr: Any, env: dict[Any, Any]) -> int:
    """Integer value of an index expression with loop/block variables taken from ``env`` (0 if unknown)."""
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    if isinstance(expr, tirx.Var):
        value = env.get(expr, 0)
        return value if isinstance(value, int) else evaluate_index(value, env)
    if isinstance(expr, tirx.Cast):
        return evaluate_index(expr.value, env)
    op = _BINARY.get(type(expr))
    if op is not None:
        return op(evaluate_index(expr.a, env), evaluate_index(expr.b, env))
    return 0


def dtype_bytes(dtype: Any) -> int:
    try:
        return max(1, int(tvm.DataType(str(dtype)).bits) // 8)
    except (TypeError, ValueError):
        return 4


@dataclass
class Access:
    buffer: Any
    flat: Any  # flattened index (row-major over the buffer shape) as a TIR expression
    deps: set[Any]
    bytes: int
    is_store: bool = False


def _flat_index(buffer: Any, indices: Any) -> Any:
    shape = [_int(d) for d in buffer.shape]
    flat = None
    for dim, index in zip(shape, indices, strict=False):
        flat = index if flat is None else flat * dim + index
    return flat if flat is not None else tirx.IntImm("int64", 0)


class LoopNestWalker:
    """Walks a scheduled PrimFunc and hands each store with its loop stack to :meth:`store`."""

    def __init__(self) -> None:
        self.bindings: dict[Any, Any] = {}  # block iter var -> its binding expression (in loop vars)
        self.deps: dict[Any, set[Any]] = {}  # block iter var -> loop vars it depends on
        self.register_buffers: set[Any] = set()  # see register_buffers()

    def _vars_of(self, expr: Any) -> set[Any]:
        found: set[Any] = set()
        tvm_ffi.structural_walk(expr, [(tirx.Var, lambda v: found.add(v))], order="pre")
        out: set[Any] = set()
        for v in found:
            out |= self.deps.get(v, {v})
        return out

    def visit(self, stmt: Any, loops: list[Loop], unroll: int = 0) -> None:
        if isinstance(stmt, tirx.For):
            step = _int(stmt.annotations.get("pragma_auto_unroll_max_step", unroll), unroll)
            kind = stmt.kind
            if kind == tirx.ForKind.UNROLLED:
                step = max(step, _int(stmt.extent))
            self.visit(stmt.body, [*loops, Loop(stmt.loop_var, _int(stmt.extent), kind, step)], step)
        elif isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                self.visit(s, loops, unroll)
        elif isinstance(stmt, s_tir.SBlockRealize):
            for iv, value in zip(stmt.block.iter_vars, stmt.iter_values, strict=False):
                self.bindings[iv.var] = value
                self.deps[iv.var] = self._vars_of(value)
            self.visit(stmt.block, loops, unroll)
        elif isinstance(stmt, s_tir.SBlock):
            if stmt.init is not None:
                self.visit(stmt.init, loops, unroll)
            self.visit(stmt.body, loops, unroll)
        elif isinstance(stmt, tirx.BufferStore):
            self.store(stmt, loops)
        elif isinstance(stmt, tirx.IfThenElse):
            self.visit(stmt.then_case, loops, unroll)
            if stmt.else_case is not None:
                self.visit(stmt.else_case, loops, unroll)
        elif hasattr(stmt, "body"):
            self.visit(stmt.body, loops, unroll)

    def accesses(self, store: Any, *, as_compiled: bool = False) -> tuple[list[Access], int, int]:
        """The store's accesses (loads first), its arithmetic op count and its call count.

        ``as_compiled=True`` counts the arithmetic instructions LLVM emits for a CPU: the loads'
        index expressions are address computation (strength-reduced along the loops and folded
        into addressing modes, not work per element; a GPU work-item does compute its own
        indices), and a float multiply feeding an add or subtract is one fused multiply-add
        (TVM's LLVM code generator allows contraction: ``llvm.fmuladd``).
        """
        loads: list[Any] = []
        counts = {"arith": 0, "calls": 0, "index": 0, "fused": 0}

        def on_arith(_: Any) -> None:
            counts["arith"] += 1

        def on_index_arith(_: Any) -> None:
            counts["index"] += 1

        def on_call(_: Any) -> None:
            counts["calls"] += 1

        def on_add(node: Any) -> None:
            if "float" in str(node.ty.dtype) and (isinstance(node.a, tirx.Mul) or isinstance(node.b, tirx.Mul)):
                counts["fused"] += 1

        tvm_ffi.structural_walk(store.value, [(tvm.ir.TensorLoad, loads.append)], order="pre")
        tvm_ffi.structural_walk(store.value, [(kind, on_arith) for kind in ARITH], order="pre")
        tvm_ffi.structural_walk(store.value, [(tvm.ir.Call, on_call)], order="pre")
        if as_compiled:
            for load in loads:
                for index in load.indices:
                    tvm_ffi.structural_walk(index, [(kind, on_index_arith) for kind in ARITH], order="pre")
            tvm_ffi.structural_walk(store.value, [(tirx.Add, on_add), (tirx.Sub, on_add)], order="pre")
            counts["arith"] = max(0, counts["arith"] - counts["index"] - counts["fused"])
        out = [Access(ld.source, _flat_index(ld.source, ld.indices), self._vars_of(ld.indices),
                      dtype_bytes(ld.source.dtype)) for ld in loads]
        out.append(Access(store.buffer, _flat_index(store.buffer, store.indices), self._vars_of(store.indices),
                          dtype_bytes(store.buffer.dtype), is_store=True))
        return out, counts["arith"], counts["calls"]

    def stride(self, access: Access, var: Any) -> int:
        """Elements the access moves when ``var`` goes 0 -> 1 (others 0): 0 invariant, 1 contiguous."""
        if var not in access.deps:
            return 0
        base = evaluate_index(access.flat, {**self.bindings, var: 0})
        return evaluate_index(access.flat, {**self.bindings, var: 1}) - base

    def store(self, store: Any, loops: list[Loop]) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class StoreShape:
    """How one store statement maps onto a core (shared by the CPU and HVX models)."""

    iters: float  # scalar executions of the statement
    lanes: int  # lanes per vector operation (1: scalar)
    vector_ops: float  # executions of the statement after vectorization
    loads: float  # load instructions (vector or scalar)
    stores: float
    arith: float  # arithmetic instructions
    loop_iters: float  # iterations of loops LLVM keeps (overhead)
    chain_cycles_per_core: float  # latency bound of reduction chains in cycles (before the parallel split)
    parallel_speedup: float
    parallel_entries: float
    footprint_traffic_bytes: float
    working_set_bytes: float


def store_shape(walker: LoopNestWalker, store: Any, loops: list[Loop], lanes: int, cores: int,
                l1_bytes: int = L1_BYTES) -> StoreShape:
    """The :class:`StoreShape` of ``store`` under ``loops`` for ``lanes``-wide vectors on ``cores``."""
    accesses, arith, calls = walker.accesses(store, as_compiled=True)
    n = len(loops)
    extents = [lp.extent for lp in loops]
    iters = float(math.prod(extents)) if loops else 1.0
    # unrolled: by TVM, a loop whose nest below (vector loops count once) has at most its max-step
    # steps; then by LLVM's own full unrolling, the innermost loops left (constant trip counts all)
    # while the unrolled body stays under LLVM_FULL_UNROLL_SIZE instructions
    unrolled = [False] * n
    by_llvm = [False] * n
    steps = 1
    body = len(accesses) + arith + 8 * calls + 1  # instructions per step (+1: address/induction)
    by_tvm = True
    for j in range(n - 1, -1, -1):
        lp = loops[j]
        if lp.kind == tirx.ForKind.VECTORIZED:
            continue
        if lp.kind in (tirx.ForKind.PARALLEL, tirx.ForKind.THREAD_BINDING):
            break
        by_tvm = by_tvm and 0 < lp.unroll_max_step and steps * lp.extent <= lp.unroll_max_step
        if not by_tvm and steps * lp.extent * body > LLVM_FULL_UNROLL_SIZE:
            break
        steps *= lp.extent
        unrolled[j] = True
        by_llvm[j] = not by_tvm
    kept = [j for j in range(n) if not unrolled[j] and loops[j].kind != tirx.ForKind.VECTORIZED
            and loops[j].extent > 1]
    hot = kept[-1] if kept else None
    store_access = accesses[-1]
    # vectorization: explicit innermost vectorized loop, else LLVM's on a contiguous hot spatial loop
    vec = n - 1 if n and loops[-1].kind == tirx.ForKind.VECTORIZED else None
    if vec is None and hot is not None and loops[hot].kind == tirx.ForKind.SERIAL and loops[hot].extent >= lanes:
        var = loops[hot].var
        if walker.stride(store_access, var) == 1 and all(walker.stride(a, var) in (0, 1) for a in accesses):
            vec = hot
    if vec is None:
        # LLVM's SLP vectorizer packs a fully unrolled spatial loop whose accesses are contiguous
        for j in range(n - 1, (hot if hot is not None else -1), -1):
            var = loops[j].var
            if unrolled[j] and loops[j].extent >= 2 and walker.stride(store_access, var) == 1 and all(
                    walker.stride(a, var) in (0, 1) for a in accesses):
                vec = j
                break
    width = 1
    if vec is not None:
        width = min(loops[vec].extent, lanes)
    # Executions after LLVM's redundancy removal, per access and for the statement's arithmetic:
    # - fully unrolled loops are straight-line code, where GVN/EarlyCSE load a value once and
    #   store-to-load forwarding keeps an accumulator in a register: an access repeats only along
    #   the unrolled loops its index depends on (an unrolled reduction loads and stores its
    #   accumulator once, not once per step; but see ``in_registers`` below);
    # - an access invariant along the hot loop and everything inside it, or a whole statement
    #   invariant along the hot loop (straight-line code inside), is hoisted out of the hot loop by
    #   LICM (loads and arithmetic; stores by scalar promotion);
    # - the vectorized loop: one vector per ``width`` lanes when contiguous, one scalar per lane
    #   for a gather, one broadcast when invariant.
    inner = list(range(hot, n)) if hot is not None else list(range(n))
    statement_deps = set().union(*(a.deps for a in accesses))
    # a statement invariant along the hot loop is straight-line code there: hoisted as a whole
    statement_hoisted = hot is not None and loops[hot].var not in statement_deps

    def executions(deps: set[Any], access: Access | None, forwarded: bool = True) -> float:
        hoisted = statement_hoisted or (bool(inner) and all(loops[j].var not in deps for j in inner))
        count = 1.0
        for j, lp in enumerate(loops):
            if lp.extent <= 1:
                continue
            dep = lp.var in deps
            if j == vec:
                if access is None:
                    count *= math.ceil(lp.extent / width)
                elif dep:
                    stride = walker.stride(access, lp.var)
                    count *= math.ceil(lp.extent / width) if stride in (0, 1) else lp.extent
            elif unrolled[j] or lp.kind == tirx.ForKind.VECTORIZED:
                count *= lp.extent if dep or (by_llvm[j] and not forwarded) else 1
            elif not (hoisted and j >= hot):
                count *= lp.extent
        return count

    # the accumulator (the stored buffer, and its loads) along a loop LLVM unrolls itself stays in
    # registers only when it is a small function-local buffer (see register_buffers): that unrolling
    # runs after LLVM's early store-to-load forwarding, so another buffer is loaded and stored at
    # every update (code TVM unrolled is straight-line from the start: forwarded)
    in_registers = any(store_access.buffer.same_as(b) for b in walker.register_buffers)
    loads = stores = 0.0
    for access in accesses:
        mine = in_registers or not access.buffer.same_as(store_access.buffer)
        if access.is_store:
            stores += executions(access.deps, access, mine)
        else:
            loads += executions(access.deps, access, mine)
    vector_ops = executions(statement_deps, None)
    arith_ops = (arith + 8 * calls) * vector_ops
    loop_iters = float(math.prod(loops[j].extent for j in kept)) if kept else 1.0
    # reduction chains: every update of an accumulator (a store address) waits for the previous one
    # (LLVM does not reassociate fp adds: no fast-math), FMA_LATENCY in a register, plus
    # STORE_FORWARD_LATENCY through memory (a loop LLVM keeps between updates, or an accumulator it
    # cannot forward, see above). Only independent accumulators overlap, and only those the
    # out-of-order window holds at once: walking the loops from the innermost out, the distinct
    # store addresses among the next WINDOW_UOPS worth of statement executions.
    chain = 0.0
    reductions = [j for j in range(n) if loops[j].extent > 1 and loops[j].kind != tirx.ForKind.VECTORIZED
                  and j != vec and loops[j].var in statement_deps and loops[j].var not in store_access.deps]
    if reductions:
        r = reductions[-1]
        memory = (r in kept and r != hot) or (by_llvm[r] and not in_registers)
        latency = FMA_LATENCY + (STORE_FORWARD_LATENCY if memory else 0)
        window = WINDOW_UOPS / max(1.0, (loads + stores + arith_ops) / max(vector_ops, 1.0))
        independent = seen = 1.0
        for j in range(n - 1, -1, -1):
            if loops[j].extent <= 1 or seen >= window:
                continue
            count = math.ceil(loops[j].extent / width) if j == vec else loops[j].extent
            if loops[j].var in store_access.deps:
                independent *= min(count, max(1.0, window / seen))
            seen *= count
        chain = vector_ops * latency / independent
    par_loops = [j for j in range(n) if loops[j].kind == tirx.ForKind.PARALLEL]
    par = math.prod(loops[j].extent for j in par_loops) if par_loops else 1
    speedup = par / math.ceil(par / cores) if par > 1 else 1.0
    # fork/join only when there are threads to wake (one thread runs the parallel loop inline)
    entries = float(math.prod(loops[j].extent for j in range(par_loops[0]))) if par_loops and cores > 1 else 0.0

    def footprint(level: int) -> float:
        total = 0.0
        for access in accesses:
            total += math.prod(loops[j].extent for j in range(level, n) if loops[j].var in access.deps) * access.bytes
        return total

    level = n
    while level > 0 and footprint(level - 1) <= l1_bytes:
        level -= 1
    outer = math.prod(extents[:level]) if level else 1
    return StoreShape(iters, width, vector_ops, loads, stores, arith_ops, loop_iters, chain, speedup, entries,
                      footprint(level) * outer, footprint(0))


class CpuWalker(LoopNestWalker):
    """Sums the per-store roofline of :func:`store_shape` on a :class:`CoreModel`."""

    def __init__(self, machine: CoreModel) -> None:
        super().__init__()
        self.m = machine
        self.seconds = CALL_S

    def store(self, store: Any, loops: list[Loop]) -> None:
        m = self.m
        s = store_shape(self, store, loops, m.fp32_lanes, m.cores)
        hz = m.ghz * 1e9
        issue = max(s.loads / LOAD_PORTS, s.stores / STORE_PORTS, s.arith / VECTOR_PORTS,
                    (s.loads + s.stores + s.arith + LOOP_OVERHEAD * s.loop_iters) / ISSUE_WIDTH)
        compute_s = max(issue, s.chain_cycles_per_core) / s.parallel_speedup / hz
        bandwidth = L2_BYTES_PER_CYCLE * hz * s.parallel_speedup
        if s.working_set_bytes > LLC_BYTES:
            bandwidth = min(bandwidth, m.dram_bytes_per_s)
        self.seconds += max(compute_s, s.footprint_traffic_bytes / bandwidth) + s.parallel_entries * PARALLEL_REGION_S


STACK_ALLOCA_BYTES = 1024  # TVM's lowering puts a constant CPU allocation below this on the stack (kMaxStackAlloca)


class _AccessSites(LoopNestWalker):
    """Every statement's loop stack and accesses, and the buffers the function allocates."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[tuple[list[Loop], list[Access]]] = []
        self.allocated: list[Any] = []

    def visit(self, stmt: Any, loops: list[Loop], unroll: int = 0) -> None:
        if isinstance(stmt, s_tir.SBlock):
            self.allocated.extend(stmt.alloc_buffers)
        elif isinstance(stmt, tirx.AllocBuffer):  # an allocation outside blocks (lowered or hand-written TIR)
            self.allocated.append(stmt.buffer)
        super().visit(stmt, loops, unroll)

    def store(self, store: Any, loops: list[Loop]) -> None:
        self.sites.append((loops, self.accesses(store)[0]))


def register_buffers(func: tirx.PrimFunc) -> set[Any]:
    """The function's own buffers LLVM can keep in registers: allocated where all their accesses
    meet (TVM moves an allocation down to the lowest common loop of its accesses and compacts it
    to the region accessed below) and then under :data:`STACK_ALLOCA_BYTES`, so TVM gives them a
    stack ``alloca`` LLVM knows aliases nothing. A parameter, or a larger buffer from TVM's
    workspace allocator, is a pointer LLVM cannot tell from the others: its stores and loads stay."""
    sites = _AccessSites()
    sites.visit(func.body, [])
    out: set[Any] = set()
    for buffer in sites.allocated:
        mine = [(loops, a) for loops, accesses in sites.sites for a in accesses if a.buffer.same_as(buffer)]
        if not mine:
            continue
        common = 0
        first = mine[0][0]
        while common < len(first) and all(len(lp) > common and lp[common].var.same_as(first[common].var)
                                           for lp, _ in mine):
            common += 1
        elements = max(math.prod(lp.extent for lp in loops[common:] if lp.var in access.deps)
                       for loops, access in mine)
        if elements * dtype_bytes(buffer.dtype) < STACK_ALLOCA_BYTES:
            out.add(buffer)
    return out


def predict_cpu_seconds(mod: tvm.IRModule, machine: CoreModel) -> float:
    """Predicted run time of a scheduled single-PrimFunc module on ``machine``'s CPU cores."""
    walker = CpuWalker(machine)
    for _, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            walker.register_buffers = register_buffers(func)
            walker.visit(func.body, [])
    return walker.seconds
