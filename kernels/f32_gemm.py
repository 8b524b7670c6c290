"""fp32 GEMM for the LLVM CPU targets: register-tiled, vectorised, parallel, scheduled by hand.

``C[m, n] = A[m, k] @ B (+ bias[n])`` with ``B`` either ``[k, n]`` (``transpose_b=False``, the ONNX
MatMul weight layout) or ``[n, k]`` (``transpose_b=True``, the Linear/Gemm transB layout). Why a
hand-written kernel: TVM 0.27's CPU pipeline leaves GEMMs as plain loop nests (dlight's CPU rules
cover only GEMV and reductions), ~60x slower than OpenBLAS on the small DiT's 256x384x384.

Two inner kernels, both reading the operands in place (no packing pass: the DiT's GEMMs are small
enough that repacking a weight per call would be a visible share of the GEMM):

- ``[k, n]`` B, "outer product": a tile of ``rows x (vecs * L)`` outputs keeps ``rows * vecs``
  L-lane accumulators; per k it broadcasts ``A[i, k]`` and FMAs it with ``vecs`` contiguous loads of
  ``B[k, j..]``. The last (ragged) column tile gathers clamped lanes and stores lane by lane.
- ``[n, k]`` B, "dot": each output keeps an L-lane accumulator over k (``A[i, k..]`` x ``B[j, k..]``,
  both contiguous), lanes summed once at the end; the k tail is zero padded in registers.

The FMA is ``llvm.fmuladd`` on ``float32xL`` (L = 8 with AVX2 on x86 → ``vfmadd``; L = 4 on arm64 →
``fmla v.4s``, and on baseline x86-64 a separate mul/add rather than an ``fmaf`` libcall). Tasks are
``tiles_per_task`` column tiles (the int GEMM template's rule): TVM allocates a task's local scratch
per parallel task, so tiny GEMMs must not be split into one tile per task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tvm
from tvm.script import tirx as T

from .int_gemm import _target_info, finish
from .int_gemm_dot import tiles_per_task


@dataclass(frozen=True)
class F32Tile:
    """``rows`` x ``cols`` register tile; ``cols`` counts L-lane vectors (outer product) or outputs (dot)."""

    rows: int
    cols: int


def vector_lanes(target: tvm.target.Target) -> int:
    """fp32 lanes per FMA: 8 on x86 with AVX2 (ymm), else 4 (NEON q / SSE xmm)."""
    kind, triple, _ = _target_info(target)
    if kind == "llvm" and (not triple or triple.startswith(("x86_64", "i686"))):
        from .int_gemm_x86 import has_avx2

        return 8 if has_avx2(target) else 4
    return 4


def default_tile(m: int, n: int, lanes: int, transpose_b: bool, arm: bool) -> F32Tile:
    """Accumulators + operands within the register file: x86 16 regs (6x2 vecs outer product = 12 acc,
    3x4 dot = 12 acc), arm64 32 regs (8x3 vecs = 24 acc, 4x4 dot = 16 acc). Small m widens columns."""
    if transpose_b:
        rows = min(m, 4 if arm else 3)
        cols = 4 if rows > 1 else 8
        return F32Tile(rows, max(1, min(cols, n)))
    rows = min(m, 8 if arm else 6)
    vecs = 3 if arm else 2
    if rows <= 2:
        vecs *= 2
    return F32Tile(rows, max(1, min(vecs, -(-n // lanes))))


def _fma(acc: Any, a: Any, b: Any, lanes: int) -> Any:
    return T.call_llvm_pure_intrin(f"float32x{lanes}", f"llvm.fmuladd.v{lanes}f32", a, b, acc)


def check_args(m: int, n: int, k: int) -> None:
    from banana.compiler.errors import BadConfigError

    for name, v in (("m", m), ("n", n), ("k", k)):
        if not isinstance(v, int) or v <= 0:
            raise BadConfigError(f"f32_gemm: {name}={v!r} must be a positive int")


def f32_gemm_primfunc(
    m: int,
    n: int,
    k: int,
    *,
    target: tvm.target.Target | dict | str,
    transpose_b: bool,
    bias: bool = False,
    tile: F32Tile | None = None,
) -> tvm.tirx.PrimFunc:
    """fp32 GEMM, params ``(A [m, k], B, [bias [n],] C [m, n])``; B is ``[n, k]`` when ``transpose_b``
    else ``[k, n]``. Returns a scheduled PrimFunc (attr ``tirx.is_scheduled``), no global_symbol."""
    check_args(m, n, k)
    if isinstance(target, (dict, str)):
        target = tvm.target.Target(target)
    lanes = vector_lanes(target)
    arm = _target_info(target)[1].startswith("aarch64")
    tile = tile or default_tile(m, n, lanes, transpose_b, arm)
    if transpose_b:
        return _dot_kernel(m, n, k, lanes, tile, bias)
    return _outer_kernel(m, n, k, lanes, tile, bias)


def _outer_kernel(m: int, n: int, k: int, L: int, tile: F32Tile, bias: bool) -> tvm.tirx.PrimFunc:
    TR, TV = tile.rows, tile.cols
    TW = TV * L  # output columns per tile
    MT, NT = -(-m // TR), -(-n // TW)
    TPT = tiles_per_task(MT, NT, TR * TW * k)
    NTO = -(-NT // TPT)
    zero = T.Broadcast(T.float32(0.0), L)

    def row(it: Any, r: Any) -> Any:
        return T.min(it * TR + r, m - 1)


    @T.macro
    def body(A: Any, B: Any, Bias: Any, C: Any) -> None:
        for t in T.parallel(MT * NTO):
            with T.sblock("tile"):
                T.reads()
                T.writes()
                acc = T.sblock_alloc_buffer((TR, TV, L), "float32", scope="local")
                bv = T.sblock_alloc_buffer((TV, L), "float32", scope="local")
                it = t // NTO
                for ji in T.serial(TPT):
                    if (t % NTO) * TPT + ji < NT:
                        jt = (t % NTO) * TPT + ji
                        for r in T.unroll(TR):
                            for c in T.unroll(TV):
                                acc[r, c, T.ramp(0, 1, L)] = zero
                        if jt * TW + TW <= n:
                            for kk in T.serial(k):
                                for r in T.unroll(TR):
                                    for c in T.unroll(TV):
                                        acc[r, c, T.ramp(0, 1, L)] = _fma(
                                            acc[r, c, T.ramp(0, 1, L)], T.Broadcast(A[row(it, r), kk], L),
                                            B[kk, T.ramp(jt * TW + c * L, 1, L)], L)
                            for r in T.unroll(TR):
                                if it * TR + r < m:
                                    for c in T.unroll(TV):
                                        if bias:
                                            C[it * TR + r, T.ramp(jt * TW + c * L, 1, L)] = (
                                                acc[r, c, T.ramp(0, 1, L)] + Bias[T.ramp(jt * TW + c * L, 1, L)])
                                        else:
                                            C[it * TR + r, T.ramp(jt * TW + c * L, 1, L)] = acc[r, c, T.ramp(0, 1, L)]
                        else:
                            # ragged last column tile: clamped lanes gathered, stored lane by lane
                            for kk in T.serial(k):
                                for c in T.unroll(TV):
                                    for q in T.serial(L):
                                        bv[c, q] = B[kk, T.min(jt * TW + c * L + q, n - 1)]
                                for r in T.unroll(TR):
                                    for c in T.unroll(TV):
                                        acc[r, c, T.ramp(0, 1, L)] = _fma(
                                            acc[r, c, T.ramp(0, 1, L)], T.Broadcast(A[row(it, r), kk], L),
                                            bv[c, T.ramp(0, 1, L)], L)
                            for r in T.unroll(TR):
                                for c in T.unroll(TV):
                                    for q in T.serial(L):
                                        if it * TR + r < m and jt * TW + c * L + q < n:
                                            if bias:
                                                C[it * TR + r, jt * TW + c * L + q] = (
                                                    acc[r, c, q] + Bias[jt * TW + c * L + q])
                                            else:
                                                C[it * TR + r, jt * TW + c * L + q] = acc[r, c, q]

    func = _wrap(body, m, n, k, [k, n], bias)
    return finish(func, f"f32_gemm.outer_x{L}", rows=TR, vecs=TV, lanes=L, tiles_per_task=TPT)


def _dot_kernel(m: int, n: int, k: int, L: int, tile: F32Tile, bias: bool) -> tvm.tirx.PrimFunc:
    TR, TC = tile.rows, tile.cols
    MT, NT = -(-m // TR), -(-n // TC)
    TPT = tiles_per_task(MT, NT, TR * TC * k)
    NTO = -(-NT // TPT)
    NF, REM = k // L, k % L
    zero = T.Broadcast(T.float32(0.0), L)

    def row(it: Any, r: Any) -> Any:
        return T.min(it * TR + r, m - 1)

    def col(jt: Any, c: Any) -> Any:
        return T.min(jt * TC + c, n - 1)

    def lane_sum(acc: Any, r: Any, c: Any) -> Any:
        total = acc[r, c, 0]
        for lane in range(1, L):
            total = total + acc[r, c, lane]
        return total

    @T.macro
    def body(A: Any, B: Any, Bias: Any, C: Any) -> None:
        for t in T.parallel(MT * NTO):
            with T.sblock("tile"):
                T.reads()
                T.writes()
                acc = T.sblock_alloc_buffer((TR, TC, L), "float32", scope="local")
                av = T.sblock_alloc_buffer((TR, L), "float32", scope="local")
                bv = T.sblock_alloc_buffer((TC, L), "float32", scope="local")
                it = t // NTO
                for ji in T.serial(TPT):
                    if (t % NTO) * TPT + ji < NT:
                        jt = (t % NTO) * TPT + ji
                        for r in T.unroll(TR):
                            for c in T.unroll(TC):
                                acc[r, c, T.ramp(0, 1, L)] = zero
                        for kc in T.serial(NF):
                            for r in T.unroll(TR):
                                for c in T.unroll(TC):
                                    acc[r, c, T.ramp(0, 1, L)] = _fma(
                                        acc[r, c, T.ramp(0, 1, L)], A[row(it, r), T.ramp(kc * L, 1, L)],
                                        B[col(jt, c), T.ramp(kc * L, 1, L)], L)
                        if REM > 0:
                            for r in T.unroll(TR):
                                for q in T.serial(L):
                                    av[r, q] = T.if_then_else(q < REM, A[row(it, r), T.min(NF * L + q, k - 1)],
                                                              T.float32(0.0))
                            for c in T.unroll(TC):
                                for q in T.serial(L):
                                    bv[c, q] = T.if_then_else(q < REM, B[col(jt, c), T.min(NF * L + q, k - 1)],
                                                              T.float32(0.0))
                            for r in T.unroll(TR):
                                for c in T.unroll(TC):
                                    acc[r, c, T.ramp(0, 1, L)] = _fma(acc[r, c, T.ramp(0, 1, L)],
                                                                      av[r, T.ramp(0, 1, L)],
                                                                      bv[c, T.ramp(0, 1, L)], L)
                        for r in T.unroll(TR):
                            for c in T.unroll(TC):
                                if it * TR + r < m and jt * TC + c < n:
                                    if bias:
                                        C[it * TR + r, jt * TC + c] = lane_sum(acc, r, c) + Bias[jt * TC + c]
                                    else:
                                        C[it * TR + r, jt * TC + c] = lane_sum(acc, r, c)

    func = _wrap(body, m, n, k, [n, k], bias)
    return finish(func, f"f32_gemm.dot_x{L}", rows=TR, cols=TC, lanes=L, tiles_per_task=TPT)


def _wrap(body: Any, m: int, n: int, k: int, b_shape: list[int], bias: bool) -> tvm.tirx.PrimFunc:
    """The kernel ``body`` as a PrimFunc with params ``(A, B, bias, C)`` or, without a bias, ``(A, B, C)``."""
    if bias:
        @T.prim_func(s_tir=True)
        def f32_gemm_bias(A: T.Buffer((m, k), "float32"), B: T.Buffer(b_shape, "float32"),
                          Bias: T.Buffer((n,), "float32"), C: T.Buffer((m, n), "float32")):
            body(A, B, Bias, C)

        return f32_gemm_bias

    @T.prim_func(s_tir=True)
    def f32_gemm(A: T.Buffer((m, k), "float32"), B: T.Buffer(b_shape, "float32"), C: T.Buffer((m, n), "float32")):
        body(A, B, None, C)

    return f32_gemm
