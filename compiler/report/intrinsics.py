"""Arithmetic ops of one explicit LLVM intrinsic call in TIR (``T.call_llvm_pure_intrin`` / ``call_llvm_intrin``).

Hand-written kernels (banana's fp32/fp16 GEMMs, the integer GEMMs for AVX2, NEON dotprod/i8mm and
HVX) do their arithmetic through LLVM intrinsics on vector types, not through TIR arithmetic nodes.
To price them the report needs how many ops one call performs. That follows from the call's
*types* (result lanes R, widest vector operand I elements) plus three ISA facts that types alone
cannot show, keyed by the intrinsic family, never by a kernel:

- a fused multiply-add (``llvm.fma*``, ``llvm.fmuladd*``) does 2 ops per result lane (2R);
- a matrix multiply-accumulate (``*mmla*``: 2x8 by 8x2 blocks of a 16-element register) does 4 ops
  per operand element (4I: 32 MACs for 16 int8);
- pure data movement (shuffles, register-pair halves) does none.

Any other call whose operand is wider than its result is a dot product (``sdot``, ``pmaddwd``,
``vrmpy``, ``vdmpy``): I multiplies and I - R in-register adds, plus R accumulator adds when the
call takes an accumulator of the result type (2I total: 2 ops per multiply-accumulate, the GEMM
convention). An element-wise intrinsic does R ops.
"""

from __future__ import annotations

import functools
from typing import Any

LLVM_INTRIN_OPS = ("tirx.call_llvm_pure_intrin", "tirx.call_llvm_intrin")
_FMA = ("llvm.fma", "llvm.fmuladd")
_MATRIX = ("mmla",)
_MOVES = ("shuff", ".lo.", ".hi.", "vcombine", "vdeal", "valign", "vror", "reinterpret", "bitcast")


def lanes_of(node: Any) -> int:
    """Vector lanes of a TIR expression (1 for scalars and for nodes without a type)."""
    ty = getattr(node, "ty", None)
    dtype = getattr(ty, "dtype", None)
    return max(1, int(getattr(dtype, "lanes", 1) or 1)) if dtype is not None else 1


def dtype_of(node: Any) -> str:
    ty = getattr(node, "ty", None)
    return str(getattr(ty, "dtype", ""))


@functools.lru_cache(maxsize=1024)
def intrinsic_name(intrin_id: int) -> str:
    """LLVM intrinsic name for the id TIR stores (``llvm.fmuladd``), or ``""`` when unknown."""
    try:
        from tvm.target import codegen

        return str(codegen.llvm_get_intrinsic_name(int(intrin_id)))
    except Exception:  # noqa: BLE001 - a TVM built without LLVM: the family rules just do not apply
        return ""


def call_intrinsic_name(call: Any) -> str:
    """Name of the intrinsic an LLVM-intrinsic call invokes (its first argument is the id or the name)."""
    first = call.args[0] if len(call.args) else None
    value = getattr(first, "value", None)
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return intrinsic_name(value)
    return ""


def operands(call: Any) -> list[Any]:
    """The value operands of an LLVM-intrinsic call (the id, and a signature count if present, dropped)."""
    args = list(call.args[1:])
    if args and dtype_of(args[0]) == "uint32" and lanes_of(args[0]) == 1 and hasattr(args[0], "value"):
        args = args[1:]  # older TIR: (id, num_signature, operands...)
    return args


def intrinsic_ops(call: Any) -> int:
    """Arithmetic ops one call performs (operands' own ops not included)."""
    name = call_intrinsic_name(call)
    result_lanes = lanes_of(call)
    args = operands(call)
    widest = max((lanes_of(a) for a in args), default=result_lanes)
    if any(name.startswith(f) for f in _FMA):
        return 2 * result_lanes
    if any(m in name for m in _MATRIX):
        return 4 * widest
    if any(m in name for m in _MOVES):
        return 0
    if widest > result_lanes:
        has_acc = any(dtype_of(a) == dtype_of(call) for a in args)
        return 2 * widest if has_acc else 2 * widest - result_lanes
    return result_lanes
