"""arm64 integer GEMM: ``sdot``/``udot`` (+dotprod), ``smmla``/``usmmla`` (+i8mm), ``smlal`` (int16 A).

TVM 0.27 ships sdot/udot tensor intrinsics but none for i8mm; rather than tensorizing, the shared
template (:mod:`banana.kernels.int_gemm_dot`) calls the LLVM AArch64 intrinsics directly, so the
instruction is chosen by us, not by the auto-vectoriser. uint8 activations: ``usmmla`` (unsigned x
signed) with i8mm; with dotprod only, ``udot`` on (A, W ^ 0x80) minus 128 * rowsum(A).

int16/uint16 activations: no dot instruction takes 16-bit lanes, so the widening multiply-accumulate
``smlal``/``smlal2`` (int16 x int16 -> int32, base NEON: every arm64 core) on W sign-extended to
int16 (``sshll``): 4 MACs per instruction instead of sdot's 16. uint16 A is flipped to int16 by the
template (``a - 32768``, corrected with the column sums of W).
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm.script import tirx as T

from .int_gemm_dot import DotIsa, Tile, dot_int_gemm

SDOT = "llvm.aarch64.neon.sdot.v4i32.v16i8"
UDOT = "llvm.aarch64.neon.udot.v4i32.v16i8"
SMMLA = "llvm.aarch64.neon.smmla.v4i32.v16i8"
USMMLA = "llvm.aarch64.neon.usmmla.v4i32.v16i8"
SMULL = "llvm.aarch64.neon.smull.v4i32"


def _dotprod(acc: Any, a: Any, w: Any, unsigned: bool) -> Any:
    return T.call_llvm_pure_intrin("int32x4", UDOT if unsigned else SDOT, acc, a, w)


def _i8mm(acc: Any, a: Any, w: Any, unsigned: bool) -> Any:
    return T.call_llvm_pure_intrin("int32x4", USMMLA if unsigned else SMMLA, acc, a, w)


def _smlal(acc: Any, a: Any, w: Any, unsigned: bool) -> Any:
    """16 k of an int16 A row x an int8 W row: four ``smull`` of 4 lanes added to ``acc`` (LLVM fuses
    each add into ``smlal``/``smlal2``); ``unsigned`` never applies (uint16 arrives flipped)."""
    for h in range(2):  # W widened per 8-lane half: one sshll / sshll2 each
        w16 = T.Cast("int16x8", tvm.tirx.Shuffle([w], list(range(8 * h, 8 * h + 8))))
        a16 = tvm.tirx.Shuffle([a], list(range(8 * h, 8 * h + 8)))
        for q in range(2):
            lanes = list(range(4 * q, 4 * q + 4))
            acc = acc + T.call_llvm_pure_intrin("int32x4", SMULL, tvm.tirx.Shuffle([a16], lanes),
                                                tvm.tirx.Shuffle([w16], lanes))
    return acc


DOTPROD = DotIsa("arm_dotprod", _dotprod, acc_lanes=4, k_per_op=16, flip_unsigned=True)
I8MM = DotIsa("arm_i8mm", _i8mm, acc_lanes=4, k_per_op=8, mmla=True)
SMLAL = DotIsa("arm_smlal", _smlal, acc_lanes=4, k_per_op=16, wide_a=True)


def default_tile(m: int, n: int, mmla: bool, int4: bool = False) -> Tile:
    """16 accumulator registers where the operands still fit in the other 16 (no spills in the hot
    loop, checked on LLVM 22's assembly); int4 leaves registers for the unpacking; small m
    (GEMV-like rows) widens the columns instead."""
    if mmla:
        rows = 2 if m <= 2 else 4 if m <= 4 else 8
        cols = {2: 16, 4: 8, 8: 8}[rows] // (2 if int4 else 1)
        return Tile(rows, max(2, min(cols, n + n % 2)))
    rows = min(m, 2 if int4 else 4)
    cols = 4 if rows == 4 else 8
    return Tile(rows, min(cols, n))


def sdot_int_gemm(m: int, n: int, k: int, *, a_dtype: str = "int8", w_bits: int = 8, k_group: int = 0,
                  tile: Tile | None = None) -> tvm.tirx.PrimFunc:
    """+dotprod kernel (``sdot``, or ``udot`` for uint8 activations)."""
    tile = tile or default_tile(m, n, False, w_bits == 4)
    return dot_int_gemm(m, n, k, isa=DOTPROD, tile=tile, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)


def smmla_int_gemm(m: int, n: int, k: int, *, a_dtype: str = "int8", w_bits: int = 8, k_group: int = 0,
                   tile: Tile | None = None) -> tvm.tirx.PrimFunc:
    """+i8mm kernel (``smmla``, or ``usmmla`` for uint8 activations)."""
    tile = tile or default_tile(m, n, True, w_bits == 4)
    return dot_int_gemm(m, n, k, isa=I8MM, tile=tile, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)


def smlal_default_tile(m: int, n: int) -> Tile:
    """A row is two int16x8 registers, a widened W row two more: 4x2 (8 accumulators + 12 operand
    registers), 2x4 or 1x8 keep the hot loop inside the 32 NEON registers."""
    rows = min(m, 4)
    cols = 2 if rows == 4 else 4 if rows >= 2 else 8
    return Tile(rows, min(cols, n))


def smlal_int_gemm(m: int, n: int, k: int, *, a_dtype: str = "int16", w_bits: int = 8, k_group: int = 0,
                   tile: Tile | None = None) -> tvm.tirx.PrimFunc:
    """int16/uint16-activation kernel (``smlal``/``smlal2``; any arm64, no extension needed)."""
    tile = tile or smlal_default_tile(m, n)
    return dot_int_gemm(m, n, k, isa=SMLAL, tile=tile, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)
