"""fp32 GEMM for the LLVM CPU targets: register-tiled, vectorised, parallel, scheduled by hand.

``C[m, n] = A[m, k] @ B (+ bias[n])`` with ``B`` either ``[k, n]`` (``transpose_b=False``, the ONNX
MatMul weight layout) or ``[n, k]`` (``transpose_b=True``, the Linear/Gemm transB layout). Why a
hand-written kernel: TVM 0.27's CPU pipeline leaves GEMMs as plain loop nests (dlight's CPU rules
cover only GEMV and reductions), ~60x slower than OpenBLAS on the small DiT's 256x384x384.

Two inner kernels:

- "outer product" (``[k, n]`` B, and ``[n, k]`` B from :data:`PACK_MIN_ROWS` rows): a task owns one
  column panel of ``vecs * L`` columns (and, when the panels alone cannot balance the cores, a
  chunk of rows). Per k block it first packs the panel's ``k_block x (vecs * L)`` slice of B into a
  contiguous scratch (transposing an ``[n, k]`` B on the way; clamped lanes for a ragged last
  panel), sized to stay in L1 while every row tile of the task sweeps it. A row tile keeps
  ``rows * vecs`` L-lane accumulators; per k it broadcasts ``A[i, k]`` and FMAs it with ``vecs``
  loads of the packed panel. Later k blocks continue from C; the bias initialises the first.
  Why pack: reading a weight panel in place strides by ``n`` floats per k, which maps a panel of
  a 1536-wide weight onto 2 of L1's 64 sets (4x slower at 256x1536x384); the copy costs ~2 % of
  the panel's FMAs. A 24 KB panel per task, row tiles inside: 90-98 % of one core's measured
  FMA peak on the small DiT's shapes (was 40-60 % with the row-tile-outer order).
- "dot" (``[n, k]`` B with few rows, GEMV-like): each output keeps an L-lane accumulator over k
  (``A[i, k..]`` x ``B[j, k..]``, both contiguous, read in place: no rows to amortise a pack),
  lanes summed once at the end; the k tail is zero padded in registers.

The FMA is ``llvm.fmuladd`` on ``float32xL`` (L = 8 with AVX2 on x86 → ``vfmadd``; L = 4 on arm64 →
``fmla v.4s``, and on baseline x86-64 a separate mul/add rather than an ``fmaf`` libcall). The dot
kernel's tasks are ``tiles_per_task`` column tiles (the int GEMM template's rule): TVM allocates a
task's local scratch per parallel task, so tiny GEMMs must not be split into one tile per task.
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


def default_tile(m: int, n: int, lanes: int, dot: bool, arm: bool) -> F32Tile:
    """Accumulators + operands within the register file: x86 16 regs (6x2 vecs outer product = 12 acc,
    3x4 dot = 12 acc), arm64 32 regs (8x3 vecs = 24 acc, 4x4 dot = 16 acc). Small m widens columns."""
    if dot:
        rows = min(m, 4 if arm else 3)
        cols = 4 if rows > 1 else 8
        return F32Tile(rows, max(1, min(cols, n)))
    rows = min(m, 8 if arm else 6)
    vecs = 3 if arm else 2
    if rows <= 2:
        vecs *= 2
    return F32Tile(rows, max(1, min(vecs, -(-n // lanes))))


def num_cores(target: tvm.target.Target) -> int:
    """The target's ``num-cores`` (1 when absent): parallel tasks are split to balance them."""
    return max(1, int(target.attrs["num-cores"])) if "num-cores" in target.attrs else 1


#: from this many rows an ``[n, k]`` B is packed (transposed) into the outer-product kernel's panels,
#: whose copy the row tiles amortise; fewer rows (GEMV-like) keep the in-place "dot" kernel
PACK_MIN_ROWS = 16

#: a task sweeping fewer row tiles than this over a ``[k, n]`` panel reads it in place (full panels)
PACK_MIN_ROW_TILES = 4

#: bytes of L1 one column panel of B (``k_block`` x tile width) may fill: the rest holds A and C lines
L1_PANEL_BYTES = 24576


def default_k_block(k: int, tile_width: int) -> int:
    """The k block whose B panel fits :data:`L1_PANEL_BYTES`, split evenly (k = 1536 -> 4 x 384)."""
    cap = max(16, L1_PANEL_BYTES // (4 * tile_width))
    blocks = -(-k // cap)
    return -(-k // blocks)


def row_chunks(row_tiles: int, col_tiles: int, macs_per_tile: int, cores: int) -> int:
    """Row chunks per column panel: 1 when the panels alone balance the cores, else enough to."""
    if cores <= 1 or row_tiles * col_tiles * macs_per_tile < 65536 * cores:
        return 1  # too little work to be worth a second thread's wake-up
    for chunks in range(1, row_tiles + 1):
        tasks = col_tiles * chunks
        if tasks % cores == 0 or tasks >= 4 * cores:
            return chunks
    return row_tiles


def is_dot(m: int, transpose_b: bool) -> bool:
    """Whether :func:`f32_gemm_primfunc` runs the "dot" inner kernel (``[n, k]`` B, few rows)."""
    return transpose_b and m < PACK_MIN_ROWS


def target_traits(target: tvm.target.Target | dict | str) -> tuple[int, bool]:
    """(fp32 lanes, arm64?) as :func:`f32_gemm_primfunc` derives them: what its tile sizes depend on."""
    if isinstance(target, (dict, str)):
        target = tvm.target.Target(target)
    return vector_lanes(target), _target_info(target)[1].startswith("aarch64")


def vector_registers(arm: bool) -> int:
    """Architectural vector registers: 32 on arm64 (NEON q), 16 on x86-64 (AVX2 ymm / SSE xmm)."""
    return 32 if arm else 16


def outer_tile_fits(rows: int, vecs: int, arm: bool) -> bool:
    """Whether an outer-product tile's live vectors fit the register file without spills:
    ``rows * vecs`` accumulators, ``vecs`` packed-B loads and one broadcast of ``A[i, k]``."""
    return rows * vecs + vecs + 1 <= vector_registers(arm)


#: schedule-knob values the tuner tries for the outer-product kernel (``banana.tuning.gemm_knobs``);
#: filtered by :func:`outer_tile_fits` and clipped to the GEMM's size
KNOB_ROWS = {"x86": (4, 6), "arm": (4, 6, 8)}
KNOB_VECS = (1, 2, 3)


def k_block_options(k: int, tile_width: int) -> list[int]:
    """The tile's default k block first, then about half and twice it (each an even split of ``k``)."""
    base = default_k_block(k, tile_width)

    def even(cap: int) -> int:
        blocks = -(-k // max(1, cap))
        return -(-k // blocks)

    options = [base]
    for value in (even(max(16, base // 2)), even(base * 2)):
        if value not in options:
            options.append(value)
    return options


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
    k_block: int | None = None,
) -> tvm.tirx.PrimFunc:
    """fp32 GEMM, params ``(A [m, k], B, [bias [n],] C [m, n])``; B is ``[n, k]`` when ``transpose_b``
    else ``[k, n]``. Returns a scheduled PrimFunc (attr ``tirx.is_scheduled``), no global_symbol.

    Knobs (defaults need no tuning): ``tile`` the register tile, ``k_block`` the outer-product
    kernel's k block (default: the L1-sized :func:`default_k_block`); the target's ``num-cores``
    balances the parallel tasks."""
    check_args(m, n, k)
    if k_block is not None and (not isinstance(k_block, int) or k_block <= 0):
        from banana.compiler.errors import BadConfigError

        raise BadConfigError(f"f32_gemm: k_block={k_block!r} must be a positive int")
    if isinstance(target, (dict, str)):
        target = tvm.target.Target(target)
    lanes = vector_lanes(target)
    arm = _target_info(target)[1].startswith("aarch64")
    dot = transpose_b and m < PACK_MIN_ROWS
    tile = tile or default_tile(m, n, lanes, dot, arm)
    if dot:
        return _dot_kernel(m, n, k, lanes, tile, bias)
    return _outer_kernel(m, n, k, lanes, tile, bias, num_cores(target), k_block, transpose_b)


def _outer_kernel(m: int, n: int, k: int, L: int, tile: F32Tile, bias: bool, cores: int,
                  k_block: int | None, transpose_b: bool = False) -> tvm.tirx.PrimFunc:
    TR, TV = tile.rows, tile.cols
    TW = TV * L  # output columns per tile (one column panel)
    MT, NT = -(-m // TR), -(-n // TW)
    KC = k_block or default_k_block(k, TW)
    KB = -(-k // KC)
    RC = row_chunks(MT, NT, TR * TW * k, cores)
    MTC = -(-MT // RC)  # row tiles per task
    in_place = not transpose_b and MTC < PACK_MIN_ROW_TILES  # too few row tiles to repay a pack
    zero = T.Broadcast(T.float32(0.0), L)

    def row(it: Any, r: Any) -> Any:
        return T.min(it * TR + r, m - 1)

    def col(jt: Any, c: Any, q: Any) -> Any:
        return T.min(jt * TW + c * L + q, n - 1)

    def kc_extent(kb: Any) -> Any:
        return KC if k % KC == 0 else T.min(KC, k - kb * KC)

    @T.macro
    def body(A: Any, B: Any, Bias: Any, C: Any) -> None:
        for t in T.parallel(NT * RC):
            with T.sblock("tile"):
                T.reads()
                T.writes()
                acc = T.sblock_alloc_buffer((TR, TV, L), "float32", scope="local")
                bp = T.sblock_alloc_buffer((KC, TW), "float32", scope="global")
                jt = t // RC
                full = jt * TW + TW <= n
                for kb in T.serial(KB):
                    # the panel's k block, packed contiguous (ragged lanes clamped): no cache-set conflicts
                    if transpose_b:  # B [n, k]: each panel column is a contiguous row of B
                        for c in T.serial(TV):
                            for q in T.serial(L):
                                for kk in T.serial(kc_extent(kb)):
                                    bp[kk, c * L + q] = B[col(jt, c, q), kb * KC + kk]
                    else:
                        for kk in T.serial(kc_extent(kb)):
                            if full:
                                if not in_place:
                                    for c in T.unroll(TV):
                                        bp[kk, T.ramp(c * L, 1, L)] = B[kb * KC + kk, T.ramp(jt * TW + c * L, 1, L)]
                            else:
                                for c in T.unroll(TV):
                                    for q in T.serial(L):
                                        bp[kk, c * L + q] = B[kb * KC + kk, col(jt, c, q)]
                    for iti in T.serial(MTC):
                        if (t % RC) * MTC + iti < MT:
                            it = (t % RC) * MTC + iti
                            if full:
                                if kb == 0:
                                    for r in T.unroll(TR):
                                        for c in T.unroll(TV):
                                            if bias:
                                                acc[r, c, T.ramp(0, 1, L)] = Bias[T.ramp(jt * TW + c * L, 1, L)]
                                            else:
                                                acc[r, c, T.ramp(0, 1, L)] = zero
                                else:
                                    for r in T.unroll(TR):
                                        for c in T.unroll(TV):
                                            acc[r, c, T.ramp(0, 1, L)] = C[row(it, r), T.ramp(jt * TW + c * L, 1, L)]
                            else:
                                for r in T.unroll(TR):
                                    for c in T.unroll(TV):
                                        for q in T.serial(L):
                                            if kb == 0:
                                                if bias:
                                                    acc[r, c, q] = Bias[col(jt, c, q)]
                                                else:
                                                    acc[r, c, q] = T.float32(0.0)
                                            else:
                                                acc[r, c, q] = C[row(it, r), col(jt, c, q)]
                            if in_place and full:
                                for kk in T.serial(kc_extent(kb)):
                                    for r in T.unroll(TR):
                                        for c in T.unroll(TV):
                                            acc[r, c, T.ramp(0, 1, L)] = _fma(
                                                acc[r, c, T.ramp(0, 1, L)], T.Broadcast(A[row(it, r), kb * KC + kk], L),
                                                B[kb * KC + kk, T.ramp(jt * TW + c * L, 1, L)], L)
                            else:
                                for kk in T.serial(kc_extent(kb)):
                                    for r in T.unroll(TR):
                                        for c in T.unroll(TV):
                                            acc[r, c, T.ramp(0, 1, L)] = _fma(
                                                acc[r, c, T.ramp(0, 1, L)], T.Broadcast(A[row(it, r), kb * KC + kk], L),
                                                bp[kk, T.ramp(c * L, 1, L)], L)
                            if full:
                                for r in T.unroll(TR):
                                    if it * TR + r < m:
                                        for c in T.unroll(TV):
                                            C[it * TR + r, T.ramp(jt * TW + c * L, 1, L)] = acc[r, c, T.ramp(0, 1, L)]
                            else:  # ragged last column panel: stored lane by lane
                                for r in T.unroll(TR):
                                    for c in T.unroll(TV):
                                        for q in T.serial(L):
                                            if it * TR + r < m and jt * TW + c * L + q < n:
                                                C[it * TR + r, jt * TW + c * L + q] = acc[r, c, q]

    func = _wrap(body, m, n, k, [n, k] if transpose_b else [k, n], bias)
    return finish(func, f"f32_gemm.outer_x{L}", rows=TR, vecs=TV, lanes=L, k_block=KC, row_chunks=RC,
                  transpose_b=transpose_b, packed=not in_place)


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
