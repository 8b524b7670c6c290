"""The register-tiled integer GEMM template shared by the arm64 and x86 kernels.

Every variant reads A ``[m, k]`` and W ``[n, k]`` in place (no packing pass: the nano DiT's GEMMs
have m = 1..16 rows, where repacking W on every call would cost as much as the GEMM itself) and
reduces along k inside one SIMD dot instruction (:class:`DotIsa`):

- "row" ISAs (arm ``sdot``/``udot``, x86 ``pmaddwd``): a 16-byte k chunk of one A row against the
  same chunk of one W row accumulates partial sums of one output in the lanes of one register;
  an ``rows x cols`` tile keeps ``rows * cols`` accumulators and sums their lanes once per k group;
- "mmla" ISAs (arm ``smmla``/``usmmla``): two A rows x two W rows x 8 k per instruction, a 2x2
  int32 tile in one register; operands are two 8-byte row pieces joined in a register.

Exactness, all inside the kernel: an ISA without an unsigned x signed form (``udot`` is unsigned x
unsigned) computes sum a * (w ^ 0x80) = sum a * w + 128 * sum a and subtracts 128 * rowsum(A)
(an O(m*k) pre-pass); int4 W is sign-extended from each 8-byte load of nibbles with shifts and
interleaved back into k order in registers. 16-bit activations (row ISAs whose operands are int16
lanes: x86 ``pmaddwd``, arm ``smlal``): int16 is used as is, uint16 is flipped to int16 on load
(``a ^ 0x8000 = a - 32768``) and ``32768 * colsum(W)`` (an O(n*k) pre-pass over W) is added back,
since neither ISA has a uint16 x int16 form -- for direct callers only: the integer pass re-biases
uint16 to int16 itself and folds the correction into its constants at compile time. Ragged
shapes: rows/cols past m/n are clamped on load and never stored; the k tail of each group goes
through the same dot instruction with zero-padded operands, so every MAC of the GEMM is issued by a
dot instruction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tvm
from tvm.script import tirx as T

from .int_gemm import c_shape, finish, generic_int_gemm, w_shape

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DotIsa:
    """One SIMD dot instruction family as the template uses it.

    ``dot(acc, a, w)`` returns the new ``int32x{acc_lanes}`` accumulator for 16-lane operands
    ``a`` (``a_dtype`` lanes; int16 lanes for 16-bit activations) and ``w`` (int8 lanes, or uint8
    ``w ^ 0x80`` when ``flip_unsigned`` applies); ``k_per_op`` is k consumed per row per
    instruction (16 row-ISA, 8 mmla). ``wide_a``: the ISA takes int16/uint16 activations.
    """

    name: str
    dot: Callable[[Any, Any, Any, bool], Any]
    acc_lanes: int
    k_per_op: int = 16
    mmla: bool = False
    #: uint8 A needs the W ^ 0x80 / rowsum correction (no unsigned x signed form)
    flip_unsigned: bool = False
    #: operands are int16 lanes: int16/uint16 activations are accepted (int8/int4 W sign-extended by ``dot``)
    wide_a: bool = False


@dataclass(frozen=True)
class Tile:
    """Register tile: ``rows x cols`` outputs per task (mmla: both even)."""

    rows: int
    cols: int


def tiles_per_task(row_tiles: int, col_tiles: int, macs_per_tile: int) -> int:
    """Column tiles one parallel task computes. TVM allocates a task's scratch (accumulators,
    tail operands) from its workspace pool per task, which cost 13x on the nano DiT's 16x128x128
    GEMM with one tile per task: ~64 K MACs per task amortise it, while a big GEMM keeps at
    least 8 tasks for the cores."""
    min_tasks = min(8, max(1, row_tiles * col_tiles * macs_per_tile // 65536))
    tpt = max(1, min(col_tiles, -(-65536 // macs_per_tile)))
    while tpt > 1 and row_tiles * -(-col_tiles // tpt) < min_tasks:
        tpt -= 1
    return tpt


def _load_w_int4(w: Any, j: Any, k0: Any, count: int) -> tuple[Any, Any]:
    """Sign-extended (even-k, odd-k) int8 vectors of ``count`` nibbles from W4[j, k0/2 ...]."""
    half = count // 2
    raw = T.reinterpret(f"int8x{half}", w[j, T.ramp(k0 // 2, 1, half)])
    four = T.Broadcast(T.int8(4), half)
    lo = T.shift_right(T.shift_left(raw, four), four)
    hi = T.shift_right(raw, four)
    return lo, hi


def dot_int_gemm(
    m: int,
    n: int,
    k: int,
    *,
    isa: DotIsa,
    tile: Tile,
    a_dtype: str = "int8",
    w_bits: int = 8,
    k_group: int = 0,
) -> tvm.tirx.PrimFunc:
    """The scheduled kernel of the interface (see :func:`banana.kernels.int_gemm.int_gemm_primfunc`)."""
    kg = k if k_group == 0 else k_group
    groups = k // kg
    if w_bits == 4 and groups > 1 and kg % 2:
        logger.warning("int_gemm: int4 with odd k_group=%d splits bytes between groups: generic kernel", kg)
        return generic_int_gemm(m, n, k, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)
    mmla = isa.mmla
    wide = a_dtype in ("int16", "uint16")
    if wide and (mmla or not isa.wide_a):
        raise ValueError(f"{isa.name}: {a_dtype} activations need an int16-lane ISA (x86 pmaddwd, arm smlal)")
    if mmla and (tile.rows % 2 or tile.cols % 2):
        raise ValueError(f"{isa.name}: tile {tile} must have even rows and cols")
    int4 = w_bits == 4
    KI = isa.k_per_op  # k per dot instruction (per row)
    # int4 + mmla: 16 k per step, so one 8-byte load holds a W row's nibbles (8-lane shifts, no widening)
    SUB = 2 if (mmla and int4) else 1
    KV = KI * SUB  # k per main-loop step
    ACC = isa.acc_lanes
    RS = 2 if mmla else 1  # rows (cols) per operand vector
    RP = tile.rows // RS  # operand vectors per tile side
    CP = tile.cols // RS
    MT = (m + tile.rows - 1) // tile.rows
    NT = (n + tile.cols - 1) // tile.cols
    TPT = tiles_per_task(MT, NT, tile.rows * tile.cols * k)
    NTO = (NT + TPT - 1) // TPT  # column-tile groups; a task walks TPT tiles (buffers set up once)
    NF = kg // KV
    REM = kg % KV
    TAILS = (REM + KI - 1) // KI
    unsigned = a_dtype == "uint8"
    use_udot = unsigned and isa.flip_unsigned
    # uint16 A: int16 lanes hold a - 32768; the epilogue adds 32768 * colsum(W)
    use_colsum = a_dtype == "uint16"
    piece = KI  # bytes of one row in one operand vector
    per_g = k_group > 0
    TR, TC = tile.rows, tile.cols
    wdt = "int8" if w_bits == 8 else "uint8"

    def dot_op(acc: Any, a: Any, w: Any) -> Any:
        return isa.dot(acc, a, w, unsigned)

    def row(it: Any, rp: Any, s: int) -> Any:
        return T.min(it * TR + rp * RS + s, m - 1)

    def col(jt: Any, cp: Any, s: int) -> Any:
        return T.min(jt * TC + cp * RS + s, n - 1)

    def orow(it: Any, rp: Any, q: Any) -> Any:
        """Output row of lane q of an mmla accumulator (lanes: row-major 2x2)."""
        return it * TR + rp * 2 + q // 2

    def ocol(jt: Any, cp: Any, q: Any) -> Any:
        return jt * TC + cp * 2 + q % 2

    def w_piece(W: Any, j: Any, k0: Any) -> Any:
        """A full ``piece`` of W row j from k0 as int8 lanes in k order (int4: shifted, re-interleaved)."""
        if not int4:
            return W[j, T.ramp(k0, 1, piece)]
        lo, hi = _load_w_int4(W, j, k0, piece)
        half = piece // 2
        return tvm.tirx.Shuffle([lo, hi], [x for q in range(half) for x in (q, half + q)])

    def w_scalar(W: Any, j: Any, kk: Any) -> Any:
        if not int4:
            return W[j, kk]
        byte = T.Cast("int32", W[j, kk // 2])
        return T.Cast("int8", T.shift_right(T.shift_left(byte, 28 - 4 * (kk % 2)), 28))

    def dot_sum(acc: Any, rowsum: Any, colsum: Any, it: Any, jt: Any, rp: Any, cp: Any, g: Any) -> Any:
        """Output of a row-ISA accumulator: its lanes summed; the flipped path computed
        sum a * (w + 128), so 128 * sum a is removed."""
        total = acc[rp, cp, 0]
        for lane in range(1, ACC):
            total = total + acc[rp, cp, lane]
        if use_udot:
            total = total - rowsum[T.min(it * TR + rp, m - 1), g] * 128
        if use_colsum:
            total = total + colsum[T.min(jt * TC + cp, n - 1), g] * 32768
        return total

    w_pad = -128 if use_udot else 0  # W ^ 0x80 of the padding must be 0
    csh = list(c_shape(m, n, k, k_group))
    wsh = list(w_shape(n, k, w_bits))
    rs_shape = [m, groups] if use_udot else [1, 1]
    cs_shape = [n, groups] if use_colsum else [1, 1]
    CS = max(1, min(n, 65536 // k))  # ~64 K weight bytes summed per task (n * k adds in all)
    CS_TASKS = (n + CS - 1) // CS
    flip = T.Broadcast(T.uint8(128), 16)
    flip16 = T.Broadcast(T.uint16(0x8000), 16)

    def a_fix(v: Any) -> Any:
        """uint16 A: as int16 lanes a - 32768 (``a ^ 0x8000``); other dtypes unchanged."""
        if use_colsum:
            return T.reinterpret("int16x16", T.bitwise_xor(v, flip16))
        return v

    def flip_w(v: Any) -> Any:
        """Flipped path: W ^ 0x80 = w + 128 as unsigned bytes."""
        if use_udot:
            return T.bitwise_xor(T.reinterpret("uint8x16", v), flip)
        return v

    def a_operand(A: Any, it: Any, rp: Any, k0: Any) -> Any:
        """16 activation bytes: one row's k0..k0+15 (row ISA) or two rows' k0..k0+7 joined (mmla)."""
        if not mmla:
            return a_fix(A[row(it, rp, 0), T.ramp(k0, 1, 16)])
        return tvm.tirx.Shuffle([A[row(it, rp, 0), T.ramp(k0, 1, 8)], A[row(it, rp, 1), T.ramp(k0, 1, 8)]],
                                list(range(16)))

    def w_operand(W: Any, jt: Any, cp: Any, k0: Any, sc: int) -> Any:
        """16 weight bytes (int8, k order) for sub-step ``sc`` of the step at k0, laid out like
        :func:`a_operand` for W rows."""
        if not mmla:
            return w_piece(W, col(jt, cp, 0), k0)
        if not int4:
            return tvm.tirx.Shuffle([W[col(jt, cp, s), T.ramp(k0 + sc * KI, 1, KI)] for s in range(2)],
                                    list(range(16)))
        lo0, hi0 = _load_w_int4(W, col(jt, cp, 0), k0, 16)
        lo1, hi1 = _load_w_int4(W, col(jt, cp, 1), k0, 16)
        # lanes: lo0 0..7, hi0 8..15, lo1 16..23, hi1 24..31; k = 2q from lo[q], 2q + 1 from hi[q]
        idx = [base + x for base in (0, 16) for q in range(4 * sc, 4 * sc + 4) for x in (q, 8 + q)]
        return tvm.tirx.Shuffle([lo0, hi0, lo1, hi1], idx)

    @T.prim_func(s_tir=True)
    def int_gemm(A: T.Buffer((m, k), a_dtype), W: T.Buffer(wsh, wdt), C: T.Buffer(csh, "int32")):
        rowsum = T.alloc_buffer(rs_shape, "int32")
        colsum = T.alloc_buffer(cs_shape, "int32")
        if use_colsum:
            # CS columns per task: each task's scratch is one TVMBackendAllocWorkspace (see tiles_per_task)
            for jo in T.parallel(CS_TASKS):
                with T.sblock("colsum"):
                    T.reads()
                    T.writes()
                    wpart = T.sblock_alloc_buffer((16,), "int32", scope="local")
                    for jj in T.serial(CS):
                        if jo * CS + jj < n:
                            for g in T.serial(groups):
                                for q in T.vectorized(16):
                                    wpart[q] = 0
                                for kc in T.serial(kg // 16):
                                    for q in T.vectorized(16):
                                        wpart[q] = wpart[q] + T.Cast(
                                            "int32", w_scalar(W, jo * CS + jj, g * kg + kc * 16 + q))
                                for q in T.serial(kg % 16):
                                    wpart[q] = wpart[q] + T.Cast(
                                        "int32", w_scalar(W, jo * CS + jj, g * kg + (kg // 16) * 16 + q))
                                colsum[jo * CS + jj, g] = 0
                                for q in T.serial(16):
                                    colsum[jo * CS + jj, g] = colsum[jo * CS + jj, g] + wpart[q]
        if use_udot:
            for i in T.parallel(m):
                for g in T.serial(groups):
                    with T.sblock("rowsum"):
                        T.reads()
                        T.writes()
                        part = T.sblock_alloc_buffer((16,), "int32", scope="local")
                        for q in T.vectorized(16):
                            part[q] = 0
                        for kc in T.serial(NF):
                            for q in T.vectorized(16):
                                part[q] = part[q] + T.Cast("int32", A[i, g * kg + kc * 16 + q])
                        for q in T.serial(REM):
                            part[q] = part[q] + T.Cast("int32", A[i, g * kg + NF * 16 + q])
                        rowsum[i, g] = 0
                        for q in T.serial(16):
                            rowsum[i, g] = rowsum[i, g] + part[q]
        for t in T.parallel(MT * NTO):
            with T.sblock("tile"):
                T.reads()
                T.writes()
                acc = T.sblock_alloc_buffer((RP, CP, ACC), "int32", scope="local")
                av = T.sblock_alloc_buffer((RP, 16), a_dtype, scope="local")
                wv = T.sblock_alloc_buffer((CP, 16), "int8", scope="local")
                it = t // NTO
                for ji in T.serial(TPT):
                    if (t % NTO) * TPT + ji < NT:
                        jt = (t % NTO) * TPT + ji
                        for g in T.serial(groups):
                            for rp in T.unroll(RP):
                                for cp in T.unroll(CP):
                                    acc[rp, cp, T.ramp(0, 1, ACC)] = T.Broadcast(T.int32(0), ACC)
                            for kc in T.serial(NF):
                                for rp in T.unroll(RP):
                                    for cp in T.unroll(CP):
                                        acc[rp, cp, T.ramp(0, 1, ACC)] = dot_op(
                                            acc[rp, cp, T.ramp(0, 1, ACC)], a_operand(A, it, rp, g * kg + kc * KV),
                                            flip_w(w_operand(W, jt, cp, g * kg + kc * KV, 0)))
                                if SUB == 2:
                                    for rp in T.unroll(RP):
                                        for cp in T.unroll(CP):
                                            acc[rp, cp, T.ramp(0, 1, ACC)] = dot_op(
                                                acc[rp, cp, T.ramp(0, 1, ACC)],
                                                a_operand(A, it, rp, g * kg + kc * KV + KI),
                                                flip_w(w_operand(W, jt, cp, g * kg + kc * KV, 1)))
                            for ts in T.unroll(TAILS):
                                # k tail of the group: zero-padded operands, same dot instruction.
                                for rp in T.unroll(RP):
                                    for s in T.unroll(RS):
                                        for q in T.serial(piece):
                                            av[rp, s * piece + q] = T.if_then_else(
                                                q + ts * KI < REM,
                                                A[row(it, rp, s), T.min(g * kg + NF * KV + ts * KI + q, k - 1)],
                                                T.Cast(a_dtype, 0))
                                for cp in T.unroll(CP):
                                    for s in T.unroll(RS):
                                        for q in T.serial(piece):
                                            wv[cp, s * piece + q] = T.if_then_else(
                                                q + ts * KI < REM,
                                                w_scalar(W, col(jt, cp, s),
                                                         T.min(g * kg + NF * KV + ts * KI + q, k - 1)),
                                                T.int8(w_pad))
                                for rp in T.unroll(RP):
                                    for cp in T.unroll(CP):
                                        acc[rp, cp, T.ramp(0, 1, ACC)] = dot_op(
                                            acc[rp, cp, T.ramp(0, 1, ACC)], a_fix(av[rp, T.ramp(0, 1, 16)]),
                                            flip_w(wv[cp, T.ramp(0, 1, 16)]))
                            for rp in T.unroll(RP):
                                for cp in T.unroll(CP):
                                    if mmla:
                                        for q in T.unroll(4):
                                            if orow(it, rp, q) < m and ocol(jt, cp, q) < n:
                                                if per_g:
                                                    C[orow(it, rp, q), ocol(jt, cp, q), g] = acc[rp, cp, q]
                                                else:
                                                    C[orow(it, rp, q), ocol(jt, cp, q)] = acc[rp, cp, q]
                                    else:
                                        if it * TR + rp < m and jt * TC + cp < n:
                                            if per_g:
                                                C[it * TR + rp, jt * TC + cp, g] = dot_sum(
                                                    acc, rowsum, colsum, it, jt, rp, cp, g)
                                            else:
                                                C[it * TR + rp, jt * TC + cp] = dot_sum(
                                                    acc, rowsum, colsum, it, jt, rp, cp, g)

    return finish(int_gemm, f"int_gemm.{isa.name}", rows=tile.rows, cols=tile.cols, tiles_per_task=TPT)
