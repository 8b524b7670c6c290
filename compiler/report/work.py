"""Work per kernel call: FLOPs, DRAM bytes, precision and schedule shape, read from lowered TIR.

The report's roofline needs, for every PrimFunc call in the compiled Relax ``main``, how many
arithmetic operations it performs and how many bytes it must move. Both are counted on the
lowered TIR itself (loop extents x arithmetic nodes per store; sizes of the buffers passed in and
out), so fused kernels, banana's own kernels and anything a later pass adds are counted the same
way, without a per-operator table that could drift from what is really compiled.

Hand-written SIMD kernels (banana's fp32/fp16/int GEMMs) are read the same way: their vector-typed
stores and bindings count every lane, an LLVM intrinsic call counts what its family does
(:mod:`.intrinsics`: an FMA 2 ops per lane, a dot product 2 per multiply-accumulate), and the
executed vector instructions (intrinsic calls by name and width, vector loads and stores) are kept
in ``vector_instrs``. Branches count only the iterations that take them (:mod:`.conditions`
evaluates guards such as "full tile" or "row < m" over the loop variables), so a ragged-tile path
is not charged on every tile. Stores of values without arithmetic (copies, packing, padding) are
also kept apart (``moves_by_class``): they cost per store, not per op.

Conventions: one multiply, add, max, exp, ... = one op (so a multiply-accumulate is 2 ops, the
usual GEMM convention); index arithmetic does not count; a subexpression repeated inside one
store is counted once (the compiler evaluates it once); the ops are those *executed* (a GEMM tile
that computes clamped padding rows counts them); ``bytes`` = every parameter buffer read
once plus every output written once (the compulsory DRAM traffic: caches can only reduce it for
data reused between kernels, never below the output writes of a streaming kernel).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import tvm
from tvm import relax
from tvm_ffi import structural_hash

from banana.compiler.report.conditions import Scope, branch_fraction, is_scalar_buffer, load_stride
from banana.compiler.report.intrinsics import LLVM_INTRIN_OPS, call_intrinsic_name, intrinsic_ops, lanes_of, operands

_ARITH = ("Add", "Sub", "Mul", "Div", "Mod", "FloorDiv", "FloorMod", "Min", "Max",
          "EQ", "NE", "LT", "LE", "GT", "GE", "And", "Or", "Not", "Select")
_ARITH_TYPES = tuple(getattr(tvm.ir.prim.expr, name) for name in _ARITH)
_INDEX_DTYPES = ("int64", "bool")
_FREE_CALLS = ("tirx.if_then_else",)  # counted as a select: one op
_PRECISION = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8", "uint8": "int8",
              "int32": "int8", "int4": "int4", "float64": "fp64"}


@dataclass
class KernelWork:
    """Static work of one PrimFunc (per call) and what its schedule looks like."""

    name: str
    flops: int
    bytes_read: int
    bytes_written: int
    precision: str
    parallel: bool
    vectorized: bool
    out_elems: int
    reduction: bool
    largest_input_bytes: int = 0
    ops_by_class: dict[str, int] = field(default_factory=dict)
    stores_by_class: dict[str, int] = field(default_factory=dict)
    #: the part of ``stores_by_class`` that stores a value with no arithmetic (copies, packing, padding)
    moves_by_class: dict[str, int] = field(default_factory=dict)
    #: executed explicit-SIMD instructions by ``kind.dtype`` (intrinsic calls by LLVM name, vector
    #: element-wise ops, vector and broadcast loads, vector stores): what a hand-written kernel issues
    vector_instrs: dict[str, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in ops per DRAM byte."""
        return self.flops / self.bytes if self.bytes else math.inf


@dataclass
class KernelCall:
    """One call of a kernel in ``main``, in execution order."""

    index: int
    kernel: str


@dataclass
class ModelWork:
    """Everything the roofline and memory reports need from one compiled module."""

    kernels: dict[str, KernelWork]
    calls: list[KernelCall]
    planned_activation_bytes: int | None = None
    storage_allocs: list[int] = field(default_factory=list)

    @property
    def total_flops(self) -> int:
        return sum(self.kernels[c.kernel].flops for c in self.calls)

    @property
    def total_bytes(self) -> int:
        return sum(self.kernels[c.kernel].bytes for c in self.calls)

    @property
    def footprint_bytes(self) -> int:
        """Upper bound of the distinct bytes one call touches: every kernel's operands counted once."""
        return sum(k.bytes for k in self.kernels.values())

    def to_json(self) -> dict[str, Any]:
        return {"kernels": {k: {**asdict(v), "bytes": v.bytes} for k, v in self.kernels.items()},
                "calls": [asdict(c) for c in self.calls],
                "planned_activation_bytes": self.planned_activation_bytes}


def _dtype(node: Any) -> str:
    ty = getattr(node, "ty", None)
    return str(getattr(ty, "dtype", ""))


def count_ops(expr: Any, seen: set[int] | None = None) -> int:
    """Arithmetic ops in one expression, every lane counted; loads (and their index math) and casts are free.

    An element-wise node of a vector type does one op per lane; an explicit LLVM intrinsic call
    does what its family and types say (:mod:`banana.compiler.report.intrinsics`: an FMA 2 per
    lane, a dot product 2 per multiply-accumulate). A subexpression that occurs more than once in
    the expression is counted once (``seen``: structural hashes), as the compiler evaluates it once:
    expanded math functions (fast erf/exp) repeat their argument's subtree many times.
    """
    if seen is None:
        seen = set()
    if isinstance(expr, (_ARITH_TYPES, tvm.ir.expr.Call)):
        key = structural_hash(expr)
        if key in seen:
            return 0
        seen.add(key)
    if isinstance(expr, _ARITH_TYPES):
        own = 0 if _dtype(expr) in _INDEX_DTYPES and not isinstance(expr, tvm.ir.prim.expr.Select) else lanes_of(expr)
        children = [getattr(expr, a) for a in ("a", "b", "condition", "true_value", "false_value")
                    if hasattr(expr, a)]
        return own + sum(count_ops(c, seen) for c in children)
    if isinstance(expr, (tvm.ir.prim.expr.Cast, tvm.ir.prim.expr.Broadcast)):
        return count_ops(expr.value, seen)
    if isinstance(expr, tvm.ir.prim.expr.Shuffle):
        return sum(count_ops(v, seen) for v in expr.vectors)
    if isinstance(expr, tvm.ir.prim.expr.Let):
        return count_ops(expr.value, seen) + count_ops(expr.body, seen)
    if isinstance(expr, tvm.ir.expr.Call):
        name = getattr(expr.op, "name", "")
        if name in LLVM_INTRIN_OPS:
            return intrinsic_ops(expr) + sum(count_ops(a, seen) for a in operands(expr))
        own = lanes_of(expr) if name.startswith("tirx.") and name not in ("tirx.reinterpret",) else 0
        return own + sum(count_ops(a, seen) for a in expr.args)
    return 0  # loads, immediates, variables


def vector_instructions(expr: Any, out: dict[str, int], weight: int) -> None:
    """Add ``weight`` x the explicit SIMD instructions of ``expr`` to ``out`` (key ``kind.dtype``):
    intrinsic calls by name, element-wise vector ops by node, vector (and broadcast) loads."""
    if isinstance(expr, tvm.ir.expr.TensorLoad):
        if lanes_of(expr) > 1:
            out[f"load.{_dtype(expr)}"] = out.get(f"load.{_dtype(expr)}", 0) + weight
        return
    if isinstance(expr, tvm.ir.expr.Call) and getattr(expr.op, "name", "") in LLVM_INTRIN_OPS:
        key = f"{call_intrinsic_name(expr) or 'llvm_intrinsic'}.{_dtype(expr)}"
        out[key] = out.get(key, 0) + weight
        for a in operands(expr):
            vector_instructions(a, out, weight)
        return
    if isinstance(expr, tvm.ir.prim.expr.Broadcast):
        if isinstance(expr.value, tvm.ir.expr.TensorLoad):
            key = f"load_broadcast.{_dtype(expr)}"
            out[key] = out.get(key, 0) + weight
            return
        vector_instructions(expr.value, out, weight)
        return
    if isinstance(expr, _ARITH_TYPES) and lanes_of(expr) > 1:
        key = f"{type(expr).__name__.lower()}.{_dtype(expr)}"
        out[key] = out.get(key, 0) + weight
    for attr in ("a", "b", "condition", "true_value", "false_value", "value"):
        child = getattr(expr, attr, None)
        if child is not None and hasattr(child, "ty"):
            vector_instructions(child, out, weight)
    for v in getattr(expr, "vectors", None) or []:
        vector_instructions(v, out, weight)


def _extent(loop: Any) -> int:
    try:
        return int(loop.extent)
    except (TypeError, ValueError):
        return 1  # symbolic extent: shapes are static in banana, so this is only a guard


def _is_index_value(value: Any) -> bool:
    """A scalar integer binding (``it = t // 4``): index math, not arithmetic the kernel is timed by."""
    dtype = _dtype(value)
    return lanes_of(value) == 1 and (dtype.startswith(("int", "uint")) or dtype == "bool")


@dataclass
class _Ctx:
    """Where a statement runs: loop trip product, schedule shape, branch conditions, variable scope."""

    trips: int
    par: bool
    vec: bool
    red: bool
    conds: tuple[Any, ...]
    scope: Scope
    vec_var: Any = None  # the innermost vectorised loop's variable


class _StmtCounter:
    """Walks a PrimFunc body: ops = sum over stores (and vector/float bindings) of the ops in the value
    x the iterations that execute it (enclosing extents x the share in which its branch conditions hold)."""

    def __init__(self) -> None:
        self.ops = 0
        self.parallel = False
        self.vectorized = False
        self.reduction = False
        self.ops_by_class: dict[str, int] = {}
        self.stores_by_class: dict[str, int] = {}
        self.moves_by_class: dict[str, int] = {}
        self.vector_instrs: dict[str, int] = {}
        self._fractions: dict[tuple[int, ...], float | None] = {}
        self._made: list[Any] = []  # negated guards built here: kept alive so their hashes (addresses) stay unique

    def _runs(self, ctx: _Ctx) -> int:
        """Iterations in which a statement at ``ctx`` executes."""
        if not ctx.conds:
            return ctx.trips
        key = tuple(c.__hash__() for c in ctx.conds)
        if key not in self._fractions:
            self._fractions[key] = branch_fraction(list(ctx.conds), ctx.scope)
        frac = self._fractions[key]
        return ctx.trips if frac is None else int(round(ctx.trips * frac))

    def _count(self, value: Any, ctx: _Ctx, stored_lanes: int) -> None:
        runs = self._runs(ctx)
        if runs == 0:
            return
        lanes = lanes_of(value)
        simd = lanes > 1 and not ctx.vec
        ops = runs * count_ops(value)
        self.ops += ops
        # a vectorised copy that gathers (its load is not contiguous along the vectorised loop, e.g. a
        # transpose) loads element by element: it moves data like scalar code, so it is classed as such
        gather = ctx.vec and ops == 0 and ctx.vec_var is not None and any(
            load_stride(load, ctx.vec_var, ctx.scope) not in (0, 1) for load in _loads(value))
        key = schedule_class(ctx.par, ctx.vec and not gather, ctx.red, simd=simd)
        self.ops_by_class[key] = self.ops_by_class.get(key, 0) + ops
        if stored_lanes:
            self.stores_by_class[key] = self.stores_by_class.get(key, 0) + runs * stored_lanes
            if ops == 0:
                self.moves_by_class[key] = self.moves_by_class.get(key, 0) + runs * stored_lanes
        if simd:
            vector_instructions(value, self.vector_instrs, runs)
            if stored_lanes:
                store_key = f"store.{_dtype(value)}"
                self.vector_instrs[store_key] = self.vector_instrs.get(store_key, 0) + runs

    def visit(self, stmt: Any, ctx: _Ctx) -> None:
        from tvm import s_tir, tirx

        if stmt is None:
            return
        if isinstance(stmt, tirx.For):
            kind = int(stmt.kind)
            is_par = kind in (int(tirx.ForKind.PARALLEL), int(tirx.ForKind.THREAD_BINDING))
            is_vec = kind == int(tirx.ForKind.VECTORIZED)
            self.parallel |= is_par
            self.vectorized |= is_vec
            inner = _Ctx(ctx.trips * _extent(stmt), ctx.par or is_par, ctx.vec or is_vec, ctx.red, ctx.conds,
                         ctx.scope.with_loop(stmt.loop_var, stmt.min, stmt.extent),
                         stmt.loop_var if is_vec else ctx.vec_var)
            self.visit(stmt.body, inner)
        elif isinstance(stmt, tirx.SeqStmt):
            scope = ctx.scope.copy()  # a Bind is visible to the statements after it in this sequence
            inner = _Ctx(ctx.trips, ctx.par, ctx.vec, ctx.red, ctx.conds, scope, ctx.vec_var)
            for child in stmt.seq:
                self.visit(child, inner)
        elif isinstance(stmt, tirx.Bind):
            ctx.scope.bind(stmt.var, stmt.value)
            if not _is_index_value(stmt.value):
                self._count(stmt.value, ctx, 0)
        elif isinstance(stmt, s_tir.SBlockRealize):
            scope = ctx.scope.copy()
            for iv, value in zip(stmt.block.iter_vars, stmt.iter_values, strict=False):
                scope.bind(iv.var, value)
            pred = stmt.predicate
            conds = ctx.conds if _is_true(pred) else (*ctx.conds, pred)
            self.visit(stmt.block, _Ctx(ctx.trips, ctx.par, ctx.vec, ctx.red, conds, scope, ctx.vec_var))
        elif isinstance(stmt, s_tir.SBlock):
            is_red = stmt.init is not None
            self.reduction |= is_red
            # the init store runs once per output and does no arithmetic: not visited
            self.visit(stmt.body, _Ctx(ctx.trips, ctx.par, ctx.vec, ctx.red or is_red, ctx.conds, ctx.scope,
                                       ctx.vec_var))
        elif isinstance(stmt, tirx.IfThenElse):
            cond = stmt.condition
            self.visit(stmt.then_case, _Ctx(ctx.trips, ctx.par, ctx.vec, ctx.red, (*ctx.conds, cond), ctx.scope,
                                            ctx.vec_var))
            if stmt.else_case is not None:
                self._made.append(tvm.tirx.Not(cond))
                self.visit(stmt.else_case, _Ctx(ctx.trips, ctx.par, ctx.vec, ctx.red,
                                                (*ctx.conds, self._made[-1]), ctx.scope, ctx.vec_var))
        elif isinstance(stmt, tirx.BufferStore):
            if is_scalar_buffer(stmt.buffer) and _is_index_value(stmt.value):
                ctx.scope.bind_scalar_buffer(stmt.buffer, stmt.value)  # a scalar index variable, not work
            else:
                self._count(stmt.value, ctx, lanes_of(stmt.value))
        elif isinstance(stmt, tirx.Evaluate):
            if isinstance(stmt.value, tvm.ir.expr.Call):
                self._count(stmt.value, ctx, 0)
        elif hasattr(stmt, "body"):
            self.visit(stmt.body, ctx)


def _loads(expr: Any) -> list[Any]:
    """The memory loads of a (copy) expression, not looking into their indices."""
    if isinstance(expr, tvm.ir.expr.TensorLoad):
        return [expr]
    out: list[Any] = []
    for attr in ("a", "b", "condition", "true_value", "false_value", "value"):
        child = getattr(expr, attr, None)
        if child is not None and hasattr(child, "ty"):
            out.extend(_loads(child))
    if isinstance(expr, tvm.ir.expr.Call):
        for arg in expr.args:
            out.extend(_loads(arg))
    return out


def _is_true(pred: Any) -> bool:
    try:
        return bool(int(pred.value))
    except (AttributeError, TypeError, ValueError):
        return False


def schedule_class(parallel: bool, vectorized: bool, reduction: bool, *, simd: bool = False) -> str:
    """Name of the code shape a store runs in: what the cost model assigns a throughput to.

    ``vec``: a loop the compiler vectorises; ``simd``: vector-typed values written explicitly in the
    TIR (intrinsic calls, ramp loads/stores) outside such loops, i.e. a hand-written SIMD kernel;
    ``scalar``: neither."""
    shape = "vec" if vectorized else "simd" if simd else "scalar"
    return f"{'par' if parallel else 'ser'}_{shape}_{'red' if reduction else 'ew'}"


def _buffer_bytes(var: Any) -> int:
    ty = var.ty
    elems = math.prod(int(d) for d in ty.shape)
    return elems * max(1, tvm.runtime.DataType(str(ty.dtype)).bits // 8)


def _buffer_elems(var: Any) -> int:
    return math.prod(int(d) for d in var.ty.shape)


def analyze_primfunc(name: str, func: Any, n_outputs: int = 1) -> KernelWork:
    """Work of one PrimFunc; the last ``n_outputs`` parameters are its outputs (DPS convention)."""
    counter = _StmtCounter()
    counter.visit(func.body, _Ctx(1, False, False, False, (), Scope()))
    params = [p for p in func.params if hasattr(p.ty, "shape")]
    outs, ins = params[len(params) - n_outputs:], params[: len(params) - n_outputs]
    out_dtype = str(outs[0].ty.dtype) if outs else "float32"
    in_dtypes = [str(p.ty.dtype) for p in ins]
    compute_dtype = "int8" if any(d in ("int8", "uint8") for d in in_dtypes) else out_dtype
    return KernelWork(
        name=name,
        flops=counter.ops,
        bytes_read=sum(_buffer_bytes(p) for p in ins),
        bytes_written=sum(_buffer_bytes(p) for p in outs),
        precision=_PRECISION.get(compute_dtype, compute_dtype),
        parallel=counter.parallel,
        vectorized=counter.vectorized,
        out_elems=sum(_buffer_elems(p) for p in outs),
        reduction=counter.reduction,
        largest_input_bytes=max((_buffer_bytes(p) for p in ins), default=0),
        ops_by_class=counter.ops_by_class,
        stores_by_class=counter.stores_by_class,
        moves_by_class=counter.moves_by_class,
        vector_instrs=counter.vector_instrs,
    )


def _calls_in(expr: Any) -> Iterable[Any]:
    """Relax calls in ``main`` in program order (bindings of a lowered, non-dataflow function)."""
    body = expr.body
    for block in body.blocks:
        for binding in block.bindings:
            value = binding.value
            yield value


def analyze_lowered(mod: tvm.IRModule, entry: str = "main") -> ModelWork:
    """Kernels and call sequence of a module after ``CallTIRRewrite`` (DPS calls to PrimFuncs).

    Each Relax call whose callee is a GlobalVar bound to a PrimFunc is one kernel call; its
    output count is the number of arguments beyond the PrimFunc's inputs that the call passes
    (all parameters are buffers after lowering, the outputs last). ``R.vm.alloc_storage`` sizes
    give the static memory plan: their sum is the activation memory the VM allocates.
    """
    from tvm import tirx

    kernels: dict[str, KernelWork] = {}
    calls: list[KernelCall] = []
    storage: list[int] = []
    func = mod[entry]
    out_count: dict[str, int] = {}
    for value in _calls_in(func):
        if not isinstance(value, relax.Call):
            continue
        op = value.op
        if isinstance(op, tvm.ir.GlobalVar) and isinstance(mod[op], tirx.PrimFunc):
            name = op.name_hint
            if name not in kernels:
                kernels[name] = analyze_primfunc(name, mod[op], out_count.get(name, 1))
            calls.append(KernelCall(index=len(calls), kernel=name))
        elif isinstance(op, tvm.ir.Op) and op.name == "relax.vm.alloc_storage":
            shape = value.args[0]
            storage.append(int(shape.values[0]) if hasattr(shape, "values") else 0)
    return ModelWork(kernels=kernels, calls=calls, planned_activation_bytes=sum(storage) if storage else None,
                     storage_allocs=storage)


def lower_for_analysis(mod: tvm.IRModule, target_json: dict[str, Any], *,
                       gemm_kernels: bool | None = None) -> tvm.IRModule:
    """The same lowering the LLVM backends compile (``banana.compiler.lowering``), without codegen.

    ``gemm_kernels``: None = the lowering's own default (what ``compile_llvm`` builds with), else
    forced, so a calibration or a check can price either pipeline. Runs inside whatever tuning
    database context is active, as the build does (``banana.tuning.apply``).
    """
    from banana.compiler.lowering import llvm_pipeline

    target = tvm.target.Target(target_json)
    if gemm_kernels is None:
        return llvm_pipeline(target)(mod)
    return llvm_pipeline(target, gemm_kernels=gemm_kernels)(mod)
