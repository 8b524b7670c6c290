"""Work per kernel call: FLOPs, DRAM bytes, precision and schedule shape, read from lowered TIR.

The report's roofline needs, for every PrimFunc call in the compiled Relax ``main``, how many
arithmetic operations it performs and how many bytes it must move. Both are counted on the
lowered TIR itself (loop extents x arithmetic nodes per store; sizes of the buffers passed in and
out), so fused kernels, banana's own kernels and anything a later pass adds are counted the same
way, without a per-operator table that could drift from what is really compiled.

Conventions: one multiply, add, max, exp, ... = one op (so a multiply-accumulate is 2 ops, the
usual GEMM convention); index arithmetic does not count; ``bytes`` = every parameter buffer read
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

    def to_json(self) -> dict[str, Any]:
        return {"kernels": {k: {**asdict(v), "bytes": v.bytes} for k, v in self.kernels.items()},
                "calls": [asdict(c) for c in self.calls],
                "planned_activation_bytes": self.planned_activation_bytes}


def _dtype(node: Any) -> str:
    ty = getattr(node, "ty", None)
    return str(getattr(ty, "dtype", ""))


def count_ops(expr: Any) -> int:
    """Arithmetic ops in one scalar expression; loads (and their index math) and casts are free."""
    if isinstance(expr, _ARITH_TYPES):
        own = 0 if _dtype(expr) in _INDEX_DTYPES and not isinstance(expr, tvm.ir.prim.expr.Select) else 1
        children = [getattr(expr, a) for a in ("a", "b", "condition", "true_value", "false_value")
                    if hasattr(expr, a)]
        return own + sum(count_ops(c) for c in children)
    if isinstance(expr, tvm.ir.prim.expr.Cast):
        return count_ops(expr.value)
    if isinstance(expr, tvm.ir.expr.Call):
        name = getattr(expr.op, "name", "")
        own = 1 if name.startswith("tirx.") and name not in ("tirx.reinterpret",) else 0
        return own + sum(count_ops(a) for a in expr.args)
    return 0  # loads, immediates, variables


def _extent(loop: Any) -> int:
    try:
        return int(loop.extent)
    except (TypeError, ValueError):
        return 1  # symbolic extent: shapes are static in banana, so this is only a guard


class _StmtCounter:
    """Walks a PrimFunc body: ops = sum over stores of (ops in the value) x (enclosing extents)."""

    def __init__(self) -> None:
        self.ops = 0
        self.parallel = False
        self.vectorized = False
        self.reduction = False
        self.ops_by_class: dict[str, int] = {}
        self.stores_by_class: dict[str, int] = {}

    def visit(self, stmt: Any, trips: int, par: bool = False, vec: bool = False, red: bool = False) -> None:
        from tvm import s_tir, tirx

        if stmt is None:
            return
        if isinstance(stmt, tirx.For):
            kind = int(stmt.kind)
            is_par = kind in (int(tirx.ForKind.PARALLEL), int(tirx.ForKind.THREAD_BINDING))
            is_vec = kind == int(tirx.ForKind.VECTORIZED)
            self.parallel |= is_par
            self.vectorized |= is_vec
            self.visit(stmt.body, trips * _extent(stmt), par or is_par, vec or is_vec, red)
        elif isinstance(stmt, tirx.SeqStmt):
            for child in stmt.seq:
                self.visit(child, trips, par, vec, red)
        elif isinstance(stmt, s_tir.SBlockRealize):
            self.visit(stmt.block, trips, par, vec, red)
        elif isinstance(stmt, s_tir.SBlock):
            is_red = stmt.init is not None
            self.reduction |= is_red
            # the init store runs once per output and does no arithmetic: not visited
            self.visit(stmt.body, trips, par, vec, red or is_red)
        elif isinstance(stmt, tirx.IfThenElse):
            self.visit(stmt.then_case, trips, par, vec, red)
            self.visit(stmt.else_case, trips, par, vec, red)
        elif isinstance(stmt, tirx.BufferStore):
            lanes = 1
            ty = getattr(stmt.value, "ty", None)
            if ty is not None and hasattr(ty.dtype, "lanes"):
                lanes = max(1, int(ty.dtype.lanes))
            ops = trips * lanes * count_ops(stmt.value)
            self.ops += ops
            key = schedule_class(par, vec, red)
            self.ops_by_class[key] = self.ops_by_class.get(key, 0) + ops
            self.stores_by_class[key] = self.stores_by_class.get(key, 0) + trips * lanes
        elif hasattr(stmt, "body"):
            self.visit(stmt.body, trips, par, vec, red)


def schedule_class(parallel: bool, vectorized: bool, reduction: bool) -> str:
    """Name of the code shape a store runs in: what the cost model assigns a throughput to."""
    return f"{'par' if parallel else 'ser'}_{'vec' if vectorized else 'scalar'}_{'red' if reduction else 'ew'}"


def _buffer_bytes(var: Any) -> int:
    ty = var.ty
    elems = math.prod(int(d) for d in ty.shape)
    return elems * max(1, tvm.runtime.DataType(str(ty.dtype)).bits // 8)


def _buffer_elems(var: Any) -> int:
    return math.prod(int(d) for d in var.ty.shape)


def analyze_primfunc(name: str, func: Any, n_outputs: int = 1) -> KernelWork:
    """Work of one PrimFunc; the last ``n_outputs`` parameters are its outputs (DPS convention)."""
    counter = _StmtCounter()
    counter.visit(func.body, 1)
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


def lower_for_analysis(mod: tvm.IRModule, target_json: dict[str, Any]) -> tvm.IRModule:
    """The same lowering the LLVM backends compile (``banana.compiler.lowering``), without codegen."""
    from banana.compiler.lowering import llvm_pipeline

    target = tvm.target.Target(target_json)
    return llvm_pipeline(target)(mod)
