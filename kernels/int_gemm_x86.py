"""x86 integer GEMM: ``pmaddwd`` (int16 x int16 -> pairwise-summed int32) on AVX2 or SSE2.

A correct, fast-enough host path for measuring and verifying quantized models: both operands are
widened to int16 (sign-extended int8 / zero-extended uint8 A, so uint8 needs no correction) and
``vpmaddwd`` multiplies 16 k at a time into 8 int32 partial sums (no overflow: |a*w| <= 255*128).
int16 activations are native ``pmaddwd`` operands (|a*w| <= 2**22, a pair sum <= 2**23: exact);
uint16 ones arrive flipped to int16 by the template (see :mod:`banana.kernels.int_gemm_dot`).
The instruction is the LLVM intrinsic, not an auto-vectoriser guess. AVX-VNNI / AVX512-VNNI
(``vpdpbusd``) would do 4 MACs per lane, but no machine here has them to verify against, so
they are not used.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm.script import tirx as T
from tvm.target import codegen

from .int_gemm_dot import DotIsa, Tile, dot_int_gemm

PMADDWD_256 = "llvm.x86.avx2.pmadd.wd"
PMADDWD_128 = "llvm.x86.sse2.pmadd.wd"


def _avx2(acc: Any, a: Any, w: Any, unsigned: bool) -> Any:
    return acc + T.call_llvm_pure_intrin("int32x8", PMADDWD_256, T.Cast("int16x16", a), T.Cast("int16x16", w))


def _half(v: Any, hi: int) -> Any:
    return tvm.tirx.Shuffle([v], list(range(8 * hi, 8 * hi + 8)))


def _sse2(acc: Any, a: Any, w: Any, unsigned: bool) -> Any:
    a16, w16 = T.Cast("int16x16", a), T.Cast("int16x16", w)
    lo = T.call_llvm_pure_intrin("int32x4", PMADDWD_128, _half(a16, 0), _half(w16, 0))
    hi = T.call_llvm_pure_intrin("int32x4", PMADDWD_128, _half(a16, 1), _half(w16, 1))
    return acc + lo + hi


AVX2 = DotIsa("x86_avx2_pmaddwd", _avx2, acc_lanes=8, k_per_op=16, wide_a=True)
SSE2 = DotIsa("x86_sse2_pmaddwd", _sse2, acc_lanes=4, k_per_op=16, wide_a=True)


def has_avx2(target: tvm.target.Target) -> bool:
    """Whether the target's CPU (its mcpu/mattr; a bare ``llvm`` target is baseline x86-64) has AVX2."""
    return bool(codegen.target_has_features("avx2", target))


def default_tile(m: int, n: int, avx2: bool) -> Tile:
    """8 accumulators leave room for the widened operands in 16 ymm/xmm registers."""
    rows = min(m, 4)
    cols = 2 if rows == 4 else 4 if rows >= 2 else 8
    return Tile(rows, min(cols, n))


def x86_int_gemm(m: int, n: int, k: int, *, target: tvm.target.Target, a_dtype: str = "int8", w_bits: int = 8,
                 k_group: int = 0, tile: Tile | None = None) -> tvm.tirx.PrimFunc:
    """The x86 kernel: AVX2 ``vpmaddwd`` when the target has AVX2, SSE2 ``pmaddwd`` otherwise."""
    avx2 = has_avx2(target)
    tile = tile or default_tile(m, n, avx2)
    return dot_int_gemm(m, n, k, isa=AVX2 if avx2 else SSE2, tile=tile, a_dtype=a_dtype, w_bits=w_bits,
                        k_group=k_group)
