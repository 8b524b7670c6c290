"""Integer GEMM on Hexagon HVX: int8 activations through ``vrmpy``, int16 activations through ``vdmpy``.

Why hand-written TIR and not auto-vectorisation: LLVM's Hexagon backend does not turn an int8 dot
product into ``vrmpy`` by itself, and the data layout ``vrmpy`` wants (one 128-byte vector = 32 output
channels x 4 consecutive k) is not the ``[n, k]`` layout weights arrive in. The kernel therefore

1. repacks W into ``Wp[n_blocks, groups, k_steps, 32 * step]``: lane ``jj`` of vector ``(jb, g, q)``
   holds ``W[jb*32 + jj, g*kg + q*step : +step]`` (``step`` = 4 int8 for vrmpy, 2 int16 for vdmpy),
   zero where the k index leaves its group (rows past n hold anything: their lanes are never stored).
   Inside the PrimFunc (the interface's plain ``[n, k]`` W): for int8 W with 4 | k_group that is a
   transpose of 4-byte words, done 32 x 32 words at a time with five rounds of HVX ``vshuff`` (the
   rest of each row word by word); otherwise element by element (int4 nibbles, int16 lanes, k steps
   straddling groups). For constant weights, :func:`hvx_prepack_weights` does it once in numpy and
   ``prepacked=True`` takes ``Wp`` as the W argument -- on the nano DiT's shapes the per-call repack
   costs ~1.7x the packets of the prepacked kernel (see NOTES_int_gemm_hexagon.md);
2. for a register tile of ``rows x col_blocks`` accumulators (int32x32 each) walks k:
   int8/uint8 A: ``acc += vrmpy(splat(A[i, k:k+4]), Wp)`` (``vrmpybv``: b x b, ``vrmpybusv``: ub x b);
   int16/uint16 A: ``acc += vdmpy(Wp, A[i, k:k+2]):sat`` (``vdmpyhsat``: h x h, ``vdmpyhsusat``: h x uh);
3. stores whole vectors where the 32 columns are in range: one per accumulator when C's columns are
   contiguous (G = 1); for G = 2, 4 or 8 groups all G accumulators of a column block are kept and
   interleaved with ``log2(G)`` rounds of ``vshuff`` into G vectors of C's ``[32 columns, G]`` block.
   Lane by lane otherwise (ragged n tail, other group counts).

Exactness: vrmpy wraps modulo 2**32 exactly like the int32 reference. vdmpy saturates the running sum
at the int32 limits at every step, so int16 results equal the (wrapping) reference whenever no partial
sum can leave int32: guaranteed for ``k_group or k`` up to 511 (int16 A) / 256 (uint16 A) with int8
weights, 8x more with int4 weights; beyond that :func:`hvx_int_gemm_primfunc` logs a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx
from tvm.script import tirx as T

from banana.compiler.errors import BadConfigError

logger = logging.getLogger(__name__)

LANES = 32  # int32 accumulator lanes in one 128-byte HVX vector
VECTOR_BYTES = 128
_ACT_DTYPES = ("int8", "uint8", "int16", "uint16")
# Group counts whose [m, n, G] output is written with whole vectors (G accumulators interleaved by vshuff).
_INTERLEAVED_GROUPS = (2, 4, 8)
# (activation dtype) -> LLVM intrinsic of the accumulate form.
_INTRINSICS = {
    "int8": "llvm.hexagon.V6.vrmpybv.acc.128B",  # Vx.w += vrmpy(Vu.b, Vv.b)
    "uint8": "llvm.hexagon.V6.vrmpybusv.acc.128B",  # Vx.w += vrmpy(Vu.ub, Vv.b)
    "int16": "llvm.hexagon.V6.vdmpyhsat.acc.128B",  # Vx.w += vdmpy(Vu.h, Rt.h):sat
    "uint16": "llvm.hexagon.V6.vdmpyhsusat.acc.128B",  # Vx.w += vdmpy(Vu.h, Rt.uh):sat
}


@dataclass(frozen=True)
class HvxGemmLayout:
    """Geometry of the packed weights and the register tile; shared by the kernel and the pre-pack."""

    m: int
    n: int
    k: int
    a_dtype: str
    w_bits: int
    k_group: int
    rows: int  # accumulator rows per register tile
    col_blocks: int  # 32-column blocks per register tile

    @property
    def groups(self) -> int:
        return self.k // self.k_group if self.k_group else 1

    @property
    def group_k(self) -> int:
        return self.k_group or self.k

    @property
    def step(self) -> int:
        """k values per int32 lane: 4 bytes for vrmpy, 2 halfwords for vdmpy."""
        return 4 if self.a_dtype in ("int8", "uint8") else 2

    @property
    def k_steps(self) -> int:
        return -(-self.group_k // self.step)

    @property
    def n_blocks(self) -> int:
        """32-column blocks, rounded up to whole register tiles (the padding blocks are zeros)."""
        blocks = -(-self.n // LANES)
        return -(-blocks // self.col_blocks) * self.col_blocks

    @property
    def w_elem_dtype(self) -> str:
        return "int8" if self.step == 4 else "int16"

    @property
    def packed_shape(self) -> tuple[int, int, int, int]:
        return (self.n_blocks, self.groups, self.k_steps, LANES * self.step)

    @property
    def w_shape(self) -> tuple[int, int]:
        return (self.n, self.k) if self.w_bits == 8 else (self.n, (self.k + 1) // 2)

    @property
    def w_dtype(self) -> str:
        return "int8" if self.w_bits == 8 else "uint8"

    @property
    def c_shape(self) -> tuple[int, ...]:
        return (self.m, self.n, self.groups) if self.k_group else (self.m, self.n)


def hvx_gemm_layout(m: int, n: int, k: int, *, a_dtype: str = "int8", w_bits: int = 8,
                    k_group: int = 0) -> HvxGemmLayout:
    """Validate a GEMM configuration and choose its register tile (up to 4 rows x 2 column blocks).

    Why 4 x 2: 8 accumulators + 2 weight vectors + 4 splats stay well inside HVX's 32 vector registers,
    and each weight vector load feeds 4 multiply instructions. With 2, 4 or 8 k groups the tile is
    ``8 / G`` rows x 1 block x G groups, so one vshuff interleave turns it into C's ``[n, G]`` rows.
    """
    if a_dtype not in _ACT_DTYPES:
        raise BadConfigError(f"hvx int gemm: a_dtype {a_dtype!r} not in {_ACT_DTYPES}")
    if w_bits not in (4, 8):
        raise BadConfigError(f"hvx int gemm: w_bits={w_bits}, expected 4 or 8")
    if min(m, n, k) <= 0:
        raise BadConfigError(f"hvx int gemm: shape m={m} n={n} k={k} must be positive")
    if k_group < 0 or (k_group and k % k_group):
        raise BadConfigError(f"hvx int gemm: k_group={k_group} must be 0 or divide k={k}")
    blocks = -(-n // LANES)
    groups = k // k_group if k_group else 1
    if groups in _INTERLEAVED_GROUPS and k_group:  # all groups' accumulators live at once: 8 in total
        return HvxGemmLayout(m, n, k, a_dtype, w_bits, k_group, rows=min(8 // groups, m), col_blocks=1)
    return HvxGemmLayout(m, n, k, a_dtype, w_bits, k_group, rows=min(4, m), col_blocks=min(2, blocks))


def _unpack_int4(w: np.ndarray, k: int) -> np.ndarray:
    low = (w & 0x0F).astype(np.int16)
    high = (w >> 4).astype(np.int16)
    both = np.stack([low, high], axis=-1).reshape(w.shape[0], -1)[:, :k]
    return np.where(both >= 8, both - 16, both).astype(np.int8)


def hvx_prepack_weights(w: np.ndarray, layout: HvxGemmLayout) -> np.ndarray:
    """Numpy version of the kernel's W repack: ``W`` as the interface takes it -> ``Wp`` (see module doc).

    For constant weights the Relax pass can call this once and build the kernel with
    ``prepacked=True``, which skips the per-call repack.
    """
    w = np.asarray(w)
    if w.shape != layout.w_shape or w.dtype != np.dtype(layout.w_dtype):
        raise BadConfigError(f"hvx_prepack_weights: W {w.dtype}{list(w.shape)}, expected "
                             f"{layout.w_dtype}{list(layout.w_shape)}")
    full = _unpack_int4(w, layout.k) if layout.w_bits == 4 else w
    nb, g, q, _ = layout.packed_shape
    padded = np.zeros((nb * LANES, g, q * layout.step), dtype=layout.w_elem_dtype)
    padded[: layout.n, :, : layout.group_k] = full.reshape(layout.n, g, layout.group_k)
    # [nb, 32, g, q, step] -> [nb, g, q, 32, step]
    packed = padded.reshape(nb, LANES, g, q, layout.step).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(packed.reshape(layout.packed_shape))


def _weight_value(W: tirx.Buffer, layout: HvxGemmLayout, j: tirx.PrimExpr, kk: tirx.PrimExpr) -> tirx.PrimExpr:
    """W[j, kk] as the packed element type, int4 nibbles sign-extended."""
    dt = layout.w_elem_dtype
    if layout.w_bits == 8:
        return W[j, kk].astype(dt)
    byte = W[j, kk // 2].astype("int32")
    nibble = tirx.bitwise_and(tirx.shift_right(byte, (kk % 2) * 4), 15)
    return tirx.Select(nibble >= 8, nibble - 16, nibble).astype(dt)


def _emit_word_transpose(W: tirx.Buffer, Ww: tirx.Buffer, jb: tirx.PrimExpr, cb: tirx.PrimExpr, n: int) -> None:
    """Emit (into the TVMScript function being parsed) one 32 x 32 transpose of 4-byte words of int8 W.

    Rows ``jb*32 ..+32`` (clamped to ``n - 1``: lanes of rows past n are computed but never stored),
    words ``cb*32 ..+32`` of W become ``Ww[jb, cb*32 + c, 0:32]`` (``Ww`` is the packed layout with its
    (group, k step) axes merged: they never straddle a word here). Why this shape: five rounds of
    ``vshuff(-4)`` (interleave the words of rows r and r+16 into rows 2r, 2r+1) rotate the 10-bit
    (row, column) index by one bit each, so after five the matrix is transposed -- 80 permutes per
    4 KiB instead of 1024 scalar word moves. Values are bound (``T.bind``), not stored in a local
    buffer, so LLVM keeps them in vector registers.
    """
    lanes = T.ramp(0, 1, LANES)
    rows = [T.bind(tirx.reinterpret("int32x32", W.vload([tirx.min(jb * LANES + r, n - 1), cb * VECTOR_BYTES],
                                                        "int8x128"))) for r in range(LANES)]
    for _ in range(5):
        nxt = []
        for r in range(LANES // 2):
            pair = T.bind(tirx.call_llvm_pure_intrin("int32x64", "llvm.hexagon.V6.vshuffvdd.128B",
                                                     rows[r + LANES // 2], rows[r], tirx.const(-4, "int32")))
            nxt.append(T.bind(tirx.call_llvm_pure_intrin("int32x32", "llvm.hexagon.V6.lo.128B", pair)))
            nxt.append(T.bind(tirx.call_llvm_pure_intrin("int32x32", "llvm.hexagon.V6.hi.128B", pair)))
        rows = nxt
    for c in range(LANES):
        T.buffer_store(Ww, rows[c], [jb, cb * LANES + c, lanes])


def _emit_interleaved_store(C_flat: tirx.Buffer, acc: tirx.Buffer, acc_base: tirx.PrimExpr,
                            c_base: tirx.PrimExpr, groups: int) -> None:
    """Emit the store of ``groups`` accumulators (32 columns each) as C's ``[32 columns, groups]`` block.

    ``log2(groups)`` rounds of ``vshuff(-4)`` pairing vectors r and r + groups/2 interleave them so
    that output word ``jj * groups + g`` is lane ``jj`` of accumulator g: ``groups`` whole-vector
    stores instead of ``32 * groups`` scalar ones.
    """
    rows = [T.bind(acc.vload([acc_base + g * LANES], "int32x32")) for g in range(groups)]
    for _ in range(groups.bit_length() - 1):
        nxt = []
        for r in range(groups // 2):
            pair = T.bind(tirx.call_llvm_pure_intrin("int32x64", "llvm.hexagon.V6.vshuffvdd.128B",
                                                     rows[r + groups // 2], rows[r], tirx.const(-4, "int32")))
            nxt.append(T.bind(tirx.call_llvm_pure_intrin("int32x32", "llvm.hexagon.V6.lo.128B", pair)))
            nxt.append(T.bind(tirx.call_llvm_pure_intrin("int32x32", "llvm.hexagon.V6.hi.128B", pair)))
        rows = nxt
    for t in range(groups):
        T.buffer_store(C_flat, rows[t], [T.ramp(c_base + t * LANES, 1, LANES)])


def hvx_int_gemm_primfunc(m: int, n: int, k: int, *, target: tvm.target.Target | dict, a_dtype: str = "int8",
                          w_bits: int = 8, k_group: int = 0, prepacked: bool = False) -> tirx.PrimFunc:
    """Integer GEMM accumulation for HVX, params (A, W, C).

    ``C[i, j] = sum_k int32(A[i, k]) * int32(W[j, k])`` (``k_group == 0``, C ``[m, n]``), or per k group
    ``C[i, j, g]`` over ``k in [g*k_group, (g+1)*k_group)`` (C ``[m, n, k // k_group]``). A is ``a_dtype``
    ``[m, k]``; W int8 ``[n, k]`` (``w_bits=8``) or uint8 ``[n, (k+1)//2]`` with two signed nibbles per
    byte, low nibble = even k (``w_bits=4``). With ``prepacked=True`` W is instead the output of
    :func:`hvx_prepack_weights` (``HvxGemmLayout.packed_shape``, int8 or int16). Returns a scheduled
    PrimFunc without ``global_symbol``.
    """
    if isinstance(target, dict | str):
        target = tvm.target.Target(target)
    triple = str(target.attrs.get("mtriple", "")) if "mtriple" in target.attrs else ""
    if target.kind.name != "hexagon" and not triple.startswith("hexagon"):
        raise BadConfigError(f"hvx int gemm: target {target.kind.name!r}/{triple!r} is not Hexagon")
    lay = hvx_gemm_layout(m, n, k, a_dtype=a_dtype, w_bits=w_bits, k_group=k_group)
    if lay.step == 2:
        a_max = 2**15 if a_dtype == "int16" else 2**16 - 1
        w_max = 2 ** (w_bits - 1)
        if lay.group_k * a_max * w_max >= 2**31:
            logger.warning("hvx int gemm: vdmpy saturates where int32 would wrap once |partial sum| >= 2**31; "
                           "k=%d with %s activations and int%d weights can reach it", lay.group_k, a_dtype, w_bits)
    return _build(lay, prepacked)


def _build(lay: HvxGemmLayout, prepacked: bool) -> tirx.PrimFunc:
    m, n, k, G, KG, S = lay.m, lay.n, lay.k, lay.groups, lay.group_k, lay.step
    NB, Q, RI, RJ = lay.n_blocks, lay.k_steps, lay.rows, lay.col_blocks
    wshape = lay.packed_shape if prepacked else lay.w_shape
    wdt = lay.w_elem_dtype if prepacked else lay.w_dtype
    a_vec = f"{lay.a_dtype}x{S}"
    w_vec = f"{lay.w_elem_dtype}x{LANES * S}"
    intrin = _INTRINSICS[lay.a_dtype]
    vrmpy = S == 4
    pad_a = KG % S != 0  # a k step would cross into the next group/row: copy A with zero padding
    IO = -(-m // RI)
    grouped = lay.k_group > 0
    interleave = grouped and G in _INTERLEAVED_GROUPS  # accumulate all groups, store interleaved vectors
    GI = G if interleave else 1  # groups held in registers at once
    full_blocks = n // LANES  # blocks whose 32 columns are all < n
    w_align = VECTOR_BYTES if prepacked else 64  # packed W is read with aligned vmem
    # Repack granularity: whole 4-byte lanes when int8 W lanes never straddle a group, else element-wise.
    word_repack = not prepacked and lay.w_bits == 8 and S == 4 and KG % 4 == 0
    byte_repack = not prepacked and not word_repack
    KW = k // 4  # int8 W as 4-byte words per row
    CWF = KW // LANES  # whole 32-word (128-byte) column chunks per row

    def a_word(A: tirx.Buffer, Ap: tirx.Buffer, row: tirx.PrimExpr, g: tirx.PrimExpr, q: tirx.PrimExpr):
        """The ``S`` activations of one k step as one int32 (rows past m read row m-1; never stored)."""
        row = tirx.min(row, m - 1)
        src = Ap.vload([row, g, q * S], a_vec) if pad_a else A.vload([row, g * KG + q * S], a_vec)
        return tirx.reinterpret("int32", src)

    def w_vector(W: tirx.Buffer, Ww: tirx.Buffer, Wp: tirx.Buffer, jb: tirx.PrimExpr, g: tirx.PrimExpr,
                 q: tirx.PrimExpr):
        """Packed weights of one (column block, group, k step): 32 lanes x ``S`` elements."""
        if word_repack:
            return Ww.vload([jb, g * Q + q, 0], "int32x32")
        return tirx.reinterpret("int32x32", (W if prepacked else Wp).vload([jb, g, q, 0], w_vec))

    def multiply_accumulate(acc: tirx.PrimExpr, a: tirx.PrimExpr, w: tirx.PrimExpr):
        if vrmpy:  # vector x vector: the 4 activation bytes splat over 32 lanes
            return tirx.call_llvm_pure_intrin("int32x32", intrin, acc, tirx.Broadcast(a, LANES), w)
        return tirx.call_llvm_pure_intrin("int32x32", intrin, acc, w, a)  # vdmpy: vector x scalar

    @T.prim_func(private=True)
    def gemm(A: T.Buffer((m, k), lay.a_dtype), W: T.Buffer(wshape, wdt, align=w_align),
             C: T.Buffer(lay.c_shape, "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        Wp = T.alloc_buffer(lay.packed_shape if byte_repack else (1,), lay.w_elem_dtype, align=VECTOR_BYTES)
        Ww = T.alloc_buffer((NB, KW, LANES) if word_repack else (1,), "int32", align=VECTOR_BYTES)
        Ap = T.alloc_buffer((m, G, Q * S) if pad_a else (1,), lay.a_dtype, align=VECTOR_BYTES)
        if word_repack:
            # Whole 32-row x 32-word tiles: 32 row-vector loads, a 5-stage vshuff transpose, 32 stores.
            for jb, cb in T.grid(NB, CWF):
                _emit_word_transpose(W, Ww, jb, cb, n)
            # Words right of the whole 128-byte chunks one by one (a vector would read past the row).
            for jb, c, jj in T.grid(NB, KW - CWF * LANES, LANES):
                Ww[jb, CWF * LANES + c, jj] = T.reinterpret(
                    "int32", W.vload([T.min(jb * LANES + jj, n - 1), (CWF * LANES + c) * 4], "int8x4"))
        if byte_repack:
            for jb, g, q, jj, s in T.grid(NB, G, Q, LANES, S):
                Wp[jb, g, q, jj * S + s] = T.if_then_else(
                    jb * LANES + jj < n and q * S + s < KG,
                    _weight_value(W, lay, T.min(jb * LANES + jj, n - 1), T.min(g * KG + q * S + s, k - 1)),
                    T.cast(0, lay.w_elem_dtype))
        if pad_a:
            for i, g, t in T.grid(m, G, Q * S):
                Ap[i, g, t] = T.if_then_else(t < KG, A[i, T.min(g * KG + t, k - 1)], T.cast(0, lay.a_dtype))
        C_flat = T.decl_buffer((m * n * G,), "int32", data=C.data)
        for io, jo, go in T.grid(IO, NB // RJ, G // GI):
            acc = T.alloc_buffer((RI * RJ * GI * LANES,), "int32", scope="local", align=VECTOR_BYTES)
            for r in T.unroll(RI * RJ * GI):
                acc[T.ramp(r * LANES, 1, LANES)] = T.broadcast(T.int32(0), LANES)
            for gi in T.unroll(GI):
                for q in range(Q):
                    for ri in T.unroll(RI):
                        for rj in T.unroll(RJ):
                            acc[T.ramp(((ri * RJ + rj) * GI + gi) * LANES, 1, LANES)] = multiply_accumulate(
                                acc[T.ramp(((ri * RJ + rj) * GI + gi) * LANES, 1, LANES)],
                                a_word(A, Ap, io * RI + ri, go * GI + gi, q),
                                w_vector(W, Ww, Wp, jo * RJ + rj, go * GI + gi, q))
            for ri in T.unroll(RI):
                for rj in T.unroll(RJ):
                    if io * RI + ri < m:
                        if interleave and jo * RJ + rj < full_blocks:
                            _emit_interleaved_store(C_flat, acc, (ri * RJ + rj) * GI * LANES,
                                                    ((io * RI + ri) * n + (jo * RJ + rj) * LANES) * G, G)
                        elif interleave:  # ragged column block
                            for jj, gi in T.grid(LANES, GI):
                                if (jo * RJ + rj) * LANES + jj < n:
                                    C[io * RI + ri, (jo * RJ + rj) * LANES + jj, gi] = acc[
                                        ((ri * RJ + rj) * GI + gi) * LANES + jj]
                        elif G == 1 and jo * RJ + rj < full_blocks:  # C [m, n] or [m, n, 1]: contiguous
                            C_flat[T.ramp((io * RI + ri) * n + (jo * RJ + rj) * LANES, 1, LANES)] = acc[
                                T.ramp((ri * RJ + rj) * LANES, 1, LANES)]
                        else:  # ragged column block, or C columns strided by a group count not interleaved
                            for jj in range(LANES):
                                if (jo * RJ + rj) * LANES + jj < n:
                                    if grouped:
                                        C[io * RI + ri, (jo * RJ + rj) * LANES + jj, go] = acc[
                                            (ri * RJ + rj) * LANES + jj]
                                    else:
                                        C[io * RI + ri, (jo * RJ + rj) * LANES + jj] = acc[
                                            (ri * RJ + rj) * LANES + jj]

    return gemm
