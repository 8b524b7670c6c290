"""FP16 GEMM for FP16 layers on arm64 (``fmla v.8h``): ``C[i, j] = sum_k A[i, k] * W[j, k]``.

Params ``(A, W, C)``: A float16 ``[m, k]``, W float16 ``[n, k]`` (the Linear weight layout, read in
place), C ``[m, n]`` in the accumulation dtype:

- ``accumulate="float16"`` (default, the point of an FP16 layer: 8 lanes per instruction): each
  output keeps an 8-lane fp16 accumulator, ``fma``-updated with 8 k at a time (``fmla v.8h`` with
  ``+fullfp16``), and its lanes are summed once at the end. Each lane sums k/8 products, so the
  rounding error grows like that of an fp16 dot product of length k/8 (plus the 8-way sum);
- ``accumulate="float32"``: operands are widened (``fcvtl``) and ``fmla v.4s`` accumulates in fp32,
  C is float32 — for layers the plan keeps at fp16 storage but whose sums need fp32.

Why a kernel: LLVM does not vectorise a generic fp16 reduction into ``.8h`` FMAs on its own (the
reduction order would change), so the FMA is the explicit ``llvm.fma`` vector intrinsic on an
explicitly vectorised tile. The same TIR runs on x86 (LLVM promotes fp16 there), which is how the
host tests check its numbers. Ragged k is zero-padded in registers; rows/cols past m/n are clamped
on load and never stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import tvm
from tvm.script import tirx as T

from .int_gemm import finish

Accumulate = Literal["float16", "float32"]


@dataclass(frozen=True)
class Fp16Tile:
    """``rows x cols`` outputs per task, each an accumulator register."""

    rows: int = 4
    cols: int = 4


def fp16_gemm_primfunc(m: int, n: int, k: int, *, target: tvm.target.Target, accumulate: Accumulate = "float16",
                       tile: Fp16Tile | None = None) -> tvm.tirx.PrimFunc:
    """Scheduled FP16 GEMM (see the module docstring); no global_symbol (the caller names it).

    ``target`` is accepted for the interface's symmetry with :func:`banana.kernels.int_gemm.int_gemm_primfunc`;
    the TIR is the same for every LLVM target (``+fullfp16`` in the target's mattr makes it ``fmla .8h``).
    """
    from banana.compiler.errors import BadConfigError

    for name, v in (("m", m), ("n", n), ("k", k)):
        if not isinstance(v, int) or v <= 0:
            raise BadConfigError(f"fp16_gemm: {name}={v!r} must be a positive int")
    if accumulate not in ("float16", "float32"):
        raise BadConfigError(f"fp16_gemm: accumulate={accumulate!r}; expected float16 or float32")
    del target
    tile = tile or Fp16Tile(min(m, 4), min(n, 4))
    TR, TC = tile.rows, tile.cols
    L = 8 if accumulate == "float16" else 4  # lanes per FMA
    KV = 8  # k per step: one 16-byte fp16 load per row
    NF, REM = k // KV, k % KV
    MT, NT = (m + TR - 1) // TR, (n + TC - 1) // TC
    acc_t = f"{accumulate}x{L}"
    wide = accumulate == "float32"

    def row(it: Any, r: Any) -> Any:
        return T.min(it * TR + r, m - 1)

    def col(jt: Any, c: Any) -> Any:
        return T.min(jt * TC + c, n - 1)

    def halves(v: Any) -> list[Any]:
        """fp16x8 as the FMA operands: itself, or its two widened fp32x4 halves."""
        if not wide:
            return [v]
        return [T.Cast("float32x4", tvm.tirx.Shuffle([v], list(range(4 * h, 4 * h + 4)))) for h in range(2)]

    def fma(acc: Any, a: Any, w: Any) -> Any:
        out = acc
        for ah, wh in zip(halves(a), halves(w), strict=True):
            out = T.call_llvm_pure_intrin(acc_t, f"llvm.fma.v{L}f{16 if L == 8 else 32}", ah, wh, out)
        return out

    def lane_sum(acc: Any, r: Any, c: Any) -> Any:
        total = acc[r, c, 0]
        for lane in range(1, L):
            total = total + acc[r, c, lane]
        return total

    zero = T.Broadcast(T.Cast(accumulate, 0.0), L)

    @T.prim_func(s_tir=True)
    def fp16_gemm(A: T.Buffer((m, k), "float16"), W: T.Buffer((n, k), "float16"), C: T.Buffer((m, n), accumulate)):
        for t in T.parallel(MT * NT):
            with T.sblock("tile"):
                T.reads()
                T.writes()
                acc = T.sblock_alloc_buffer((TR, TC, L), accumulate, scope="local")
                av = T.sblock_alloc_buffer((TR, KV), "float16", scope="local")
                wv = T.sblock_alloc_buffer((TC, KV), "float16", scope="local")
                it = t // NT
                jt = t % NT
                for r in T.unroll(TR):
                    for c in T.unroll(TC):
                        acc[r, c, T.ramp(0, 1, L)] = zero
                for kc in T.serial(NF):
                    for r in T.unroll(TR):
                        for c in T.unroll(TC):
                            acc[r, c, T.ramp(0, 1, L)] = fma(acc[r, c, T.ramp(0, 1, L)],
                                                             A[row(it, r), T.ramp(kc * KV, 1, KV)],
                                                             W[col(jt, c), T.ramp(kc * KV, 1, KV)])
                if REM > 0:
                    for r in T.unroll(TR):
                        for q in T.serial(KV):
                            av[r, q] = T.if_then_else(q < REM, A[row(it, r), T.min(NF * KV + q, k - 1)],
                                                      T.float16(0.0))
                    for c in T.unroll(TC):
                        for q in T.serial(KV):
                            wv[c, q] = T.if_then_else(q < REM, W[col(jt, c), T.min(NF * KV + q, k - 1)],
                                                      T.float16(0.0))
                    for r in T.unroll(TR):
                        for c in T.unroll(TC):
                            acc[r, c, T.ramp(0, 1, L)] = fma(acc[r, c, T.ramp(0, 1, L)], av[r, T.ramp(0, 1, KV)],
                                                             wv[c, T.ramp(0, 1, KV)])
                for r in T.unroll(TR):
                    for c in T.unroll(TC):
                        if it * TR + r < m and jt * TC + c < n:
                            C[it * TR + r, jt * TC + c] = lane_sum(acc, r, c)

    return finish(fp16_gemm, f"fp16_gemm.acc_{accumulate}", rows=TR, cols=TC)
