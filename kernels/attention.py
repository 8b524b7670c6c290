"""Fused (grouped-query) attention for LLVM CPU targets: one TVMScript kernel per attention site.

Why a kernel of our own: TVM's default lowering of decomposed attention materialises the repeated
K/V heads and the full Lq x Lkv score matrix (hundreds of MB at 4K tokens). This kernel

- reads each K/V head once per *group*: one parallel task owns (batch, kv head, q tile) and
  computes all ``group`` query heads that share that kv head, so a K/V tile loaded into cache
  serves every query head of the group (no repeated K/V tensor exists);
- tiles flash-style with an online softmax: working memory per task is O(tile_q * group *
  (head_dim + tile_kv)), never O(Lq * Lkv);
- is written already scheduled and marked ``tirx.is_scheduled`` so dlight and MetaSchedule leave
  it alone; its schedule knobs (:class:`AttentionKnobs`) are plain data a tuner can sweep;
- runs both matmuls as register-tiled ``fmuladd`` micro-kernels like f32_gemm (broadcast x vector,
  12 accumulators), with the query rows as the vector lanes of the score tile so the online
  softmax is all vertical vector ops (no horizontal max/sum per row) and K/V are read in place.
  Why: the row-at-a-time form (one score row against a K tile, then one output row) fed each
  loaded K/V vector to a single FMA and spent a third of its time in per-row reductions: 37
  GFLOP/s on 2 cores on the small DiT versus ~140 for the GEMM; this form runs at GEMM speed in
  its matmuls (see benchmarks/attention.md). The row-at-a-time kernel stays for HVX
  (:func:`_wide_primfunc`), whose 32-lane vectors the 8-lane tiles would not fill.

Layouts: ``q [B, Hq, Lq, D]``, ``k``/``v`` ``[B, Hkv, Lkv, D]``, optional additive ``mask
[Bm, Hm, Mq, Mk]`` (each axis 1 or full: it broadcasts), output ``[B, Hq, Lq, D]``. Query head ``h`` uses
kv head ``h // group`` (``head_map="interleave"``, transformers' ``repeat_kv``) or ``h % Hkv``
(``head_map="tile"``, ``Tile``/``Concat`` of copies). Accumulation is always fp32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import tvm
from tvm.script import tirx as T

HeadMap = Literal["interleave", "tile"]

# Finite "minus infinity" for the running max: keeps exp(m_old - m_new) NaN-free when a whole kv
# tile is masked (fully masked rows then average uniformly, like onnxruntime's softmax).
_NEG_MAX = -3.4028234663852886e38
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
# 2**f on [-1/2, 1/2], minimax in relative error with p(0) = 1 (fitted in float64; max rel error 9.2e-8).
_EXP2_POLY = (1.0, 0.6931470036506653, 0.24022242426872253, 0.05550728365778923, 0.009671512059867382,
              0.001326628029346466)
# Vector width of every inner loop: 8 fp32 = one AVX2 register; on arm64 LLVM splits each op into two
# 4-lane NEON ops, so the 12-accumulator tiles below take 24 of NEON's 32 registers. (Fixed rather
# than read from the target: attention_primfunc gets no target, and 8 suits both 64-bit CPU targets.)
_LANES = 8
# Register tiles (x86 has 16 ymm registers): Q K^T keeps _QK_KEYS keys x _QK_ROW_VECS vectors of query
# rows (4 x 3 = 12 accumulators; per head-dim step 4 broadcasts + 3 loads feed 12 FMAs); P V keeps
# _PV_ROWS rows x _PV_VECS head-dim vectors (6 x 2 = 12, f32_gemm's tile).
_QK_KEYS = 4
_QK_ROW_VECS = 3
_PV_ROWS = 6
_PV_VECS = 2


@dataclass(frozen=True)
class AttentionSpec:
    """The shapes and semantics of one attention site (what the kernel is generated for)."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    scale: float
    head_map: HeadMap = "interleave"
    causal: bool = False
    mask_shape: tuple[int, int, int, int] | None = None
    dtype: str = "float32"

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    def validate(self) -> None:
        from banana.compiler.errors import BadConfigError

        if self.q_heads % self.kv_heads:
            raise BadConfigError(f"AttentionSpec.q_heads={self.q_heads} not divisible by kv_heads={self.kv_heads}")
        if self.dtype not in ("float32", "float16"):
            raise BadConfigError(f"AttentionSpec.dtype={self.dtype!r}; expected float32 or float16")
        if self.mask_shape is not None:
            full = (self.batch, self.q_heads, self.q_len, self.kv_len)
            if len(self.mask_shape) != 4 or any(m not in (1, f) for m, f in zip(self.mask_shape, full, strict=True)):
                raise BadConfigError(f"AttentionSpec.mask_shape={self.mask_shape} does not broadcast to the scores")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["mask_shape"] = list(self.mask_shape) if self.mask_shape else None
        return out


@dataclass(frozen=True)
class AttentionKnobs:
    """Schedule knobs: the tuning issue's search space; defaults are fast without tuning.

    ``tile_q`` query rows per head per task (a task computes ``group * tile_q`` rows against one
    K/V tile), ``tile_kv`` keys per online-softmax step (a multiple of 8: the score tile is ``tile_kv`` x rows).
    """

    tile_q: int = 32
    tile_kv: int = 64
    parallel: bool = True  # False: one thread (targets without TVM's CPU thread pool, e.g. Hexagon)

    def to_json(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}


def knob_space(spec: AttentionSpec) -> dict[str, list[int]]:
    """Candidate values per knob for a tuner (all produce correct kernels for ``spec``)."""
    return {"tile_q": [8, 16, 32, 64], "tile_kv": [16, 32, 64, 128]}


def default_knobs(spec: AttentionSpec, num_cores: int = 1) -> AttentionKnobs:
    """Tiles that keep a task's working set in L1/L2 and give every core some tasks."""
    tile_kv = 64 if spec.kv_len >= 64 else max(8, 1 << (spec.kv_len - 1).bit_length())
    tile_q = 32 if spec.q_len >= 32 else max(1, spec.q_len)
    # Enough parallel tasks for the cores: shrink the q tile for short sequences.
    while tile_q > 8 and spec.batch * spec.kv_heads * math.ceil(spec.q_len / tile_q) < 2 * num_cores:
        tile_q //= 2
    return AttentionKnobs(tile_q=tile_q, tile_kv=tile_kv)


def working_set_bytes(spec: AttentionSpec, knobs: AttentionKnobs) -> int:
    """Per-task scratch memory (fp32, the larger of the two kernel variants): independent of the sequence
    lengths."""
    rows, d, tk = spec.group * knobs.tile_q, spec.head_dim, knobs.tile_kv
    rows_p, d_p, block = -(-rows // _LANES) * _LANES, -(-d // (_PV_VECS * _LANES)) * _PV_VECS * _LANES, \
        _QK_ROW_VECS * _LANES
    tiled = rows_p * (d + d_p + 2) + tk * (block + d_p) + block + 2 * block
    wide = rows * d * 2 + rows * tk + d * tk + 2 * rows + tk + d + 2 + _LANES
    return 4 * max(tiled, wide)


def _fma(acc: Any, a: Any, b: Any, lanes: int) -> Any:
    return T.call_llvm_pure_intrin(f"float32x{lanes}", f"llvm.fmuladd.v{lanes}f32", a, b, acc)


def _exp(x: Any) -> Any:
    """exp(x) for x <= 0 as a vectorisable polynomial (LLVM scalarises llvm.exp on vectors).

    Cephes-style range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial: relative error
    ~2e-7; inputs below -87.3 (masked or negligible scores) give exactly 0.
    """
    xc = T.max(x, T.float32(-87.0))
    n = T.floor(xc * T.float32(_LOG2E) + T.float32(0.5))
    r = xc - n * T.float32(_LN2_HI) - n * T.float32(_LN2_LO)
    p = T.float32(1.9875691500e-4)
    p = p * r + T.float32(1.3981999507e-3)
    p = p * r + T.float32(8.3334519073e-3)
    p = p * r + T.float32(4.1665795894e-2)
    p = p * r + T.float32(1.6666665459e-1)
    p = p * r + T.float32(5.0000001201e-1)
    p = p * r * r + r + T.float32(1.0)
    two_n = T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))
    return T.Select(x < T.float32(-87.0), T.float32(0.0), p * two_n)


def _exp2(x: Any) -> Any:
    """2**x for x <= 0 (or -inf) as a vectorisable polynomial (LLVM scalarises llvm.exp2 on vectors).

    Range reduction x = n + f, n = nearbyint(x), |f| <= 1/2, degree-5 polynomial for 2**f (relative
    fit error 9e-8), 2**n built in the exponent bits: 11 vector ops. The scores are kept in the
    log2 domain (q pre-scaled by log2 e), so softmax needs no multiply here. Inputs below -127 give
    exactly 0 (2**n with a zero exponent field): masked keys never count, as with a true exp.
    """
    t = T.max(x, T.float32(-127.0))
    n = T.nearbyint(t)
    f = t - n
    p = T.float32(_EXP2_POLY[5])
    for c in reversed(_EXP2_POLY[:5]):
        p = p * f + T.float32(c)
    two_n = T.reinterpret("float32", T.shift_left(T.Cast("int32", n) + 127, 23))
    return p * two_n


def head_and_mask_readers(spec: AttentionSpec) -> tuple[Any, Any]:
    """TIR helpers shared by the CPU and GPU kernels: query head of (kv head, group member), and
    the additive mask value at (b, h, i, j) with size-1 mask axes broadcast (key-padding masks stay
    [.., 1, Lkv]: no L x L copy)."""
    G, HKV = spec.group, spec.kv_heads
    interleave = spec.head_map == "interleave"
    has_mask = spec.mask_shape is not None
    BM, HM, MQ, MK = spec.mask_shape if has_mask else (1, 1, 1, 1)

    def head_of(kvh: Any, g: Any) -> Any:
        return kvh * G + g if interleave else g * HKV + kvh

    def mask_value(b: Any, h: Any, i: Any, j: Any, mask: Any) -> Any:
        if not has_mask:
            return T.float32(0.0)
        return T.Cast("float32", mask[b if BM > 1 else 0, h if HM > 1 else 0, i if MQ > 1 else 0, j if MK > 1 else 0])

    return head_of, mask_value


def tile_geometry(spec: AttentionSpec, tile_q: int, tile_kv: int) -> tuple[int, ...]:
    """Shapes every attention kernel needs: B, HQ, HKV, LQ, LKV, D, group, q tiles, kv tiles, rows per task.

    One task owns all ``group`` query heads of a KV head for ``tile_q`` queries, hence rows = group * tile_q.
    """
    q_tiles = (spec.q_len + tile_q - 1) // tile_q
    kv_tiles = (spec.kv_len + tile_kv - 1) // tile_kv
    return (spec.batch, spec.q_heads, spec.kv_heads, spec.q_len, spec.kv_len, spec.head_dim, spec.group,
            q_tiles, kv_tiles, spec.group * tile_q)


def attention_primfunc(spec: AttentionSpec, knobs: AttentionKnobs | None = None, *,
                       wide_vectors: bool | None = None) -> tvm.tirx.PrimFunc:
    """The scheduled fused-attention PrimFunc for ``spec`` (static shapes baked in).

    Query rows are the vector lanes of the score tile: a task keeps its queries transposed
    (``qt_buf [D, rows]``, scaled, built once), so ``S^T = K Q^T`` is an outer product that
    broadcasts K entries read in place and FMAs them with row vectors of Q^T, and every softmax
    step (running max, exp, row sums, the rescale factor ``alpha``) is a vertical vector op over
    rows: no horizontal reductions, no packed copy of K. ``O += P V`` broadcasts P entries and
    FMAs them with V rows read in place. Both micro-kernels keep 8-12 ``fmuladd`` accumulators in
    registers (f32_gemm's tiles). Per kv tile a task walks its rows in blocks of
    ``_QK_ROW_VECS * L`` (the score block, ``TK x rows``, stays in L1 with the K/V tile).

    ``wide_vectors`` selects the row-at-a-time kernel (:func:`_wide_primfunc`) for targets whose
    vectors are wider than 8 fp32 (Hexagon HVX); default: that kernel iff ``knobs.parallel`` is
    False, which only the Hexagon path uses.
    """
    spec.validate()
    knobs = knobs or default_knobs(spec)
    TQ, TK = knobs.tile_q, knobs.tile_kv
    L = _LANES
    if TK % L:
        from banana.compiler.errors import BadConfigError

        raise BadConfigError(f"AttentionKnobs.tile_kv={TK} is not a multiple of {L}")
    if wide_vectors if wide_vectors is not None else not knobs.parallel:
        return _wide_primfunc(spec, knobs)
    B, HQ, HKV, LQ, LKV, D, G, NQT, NKT, R = tile_geometry(spec, TQ, TK)
    RP = -(-R // L) * L  # rows padded to whole vectors; rows >= R are zeros, never stored
    RV = _QK_ROW_VECS
    RW = RV * L  # rows per block
    NFULL = RP // RW
    RV_TAIL = (RP - NFULL * RW) // L
    JB = _QK_KEYS
    PW = _PV_VECS
    DP = -(-D // (PW * L)) * PW * L  # head dim padded to whole P.V register tiles
    NDC = DP // (PW * L)
    v_in_place = DP == D and spec.dtype == "float32"
    dtype = spec.dtype
    qscale = float(spec.scale) * _LOG2E  # scores in the log2 domain: softmax uses 2**x
    causal = bool(spec.causal)
    has_mask = spec.mask_shape is not None
    ragged_kv = LKV % TK != 0
    zero = T.Broadcast(T.float32(0.0), L)

    head_of, mask_value = head_and_mask_readers(spec)

    def q_of(qt: Any, r: Any) -> Any:
        """Clamped query row of (padded) tile row ``r``: tail and padding rows recompute a real row."""
        return T.min(qt * TQ + T.min(r, R - 1) % TQ, LQ - 1)

    def head_row(kvh: Any, r: Any) -> Any:
        return head_of(kvh, T.min(r, R - 1) // TQ)

    def key(kt: Any, j: Any) -> Any:
        """Key row of tile key ``j`` (clamped in a ragged last tile, whose tail scores are -inf)."""
        return T.min(kt * TK + j, LKV - 1) if ragged_kv else kt * TK + j

    def score(b: Any, kvh: Any, qt: Any, kt: Any, r: Any, j: Any, raw: Any, mask: Any) -> Any:
        """Score of padded row ``r`` and tile key ``j``: mask added, invalid keys -inf."""
        val = raw
        if has_mask:
            mk = mask_value(b, head_row(kvh, r), q_of(qt, r), T.min(kt * TK + j, LKV - 1), mask)
            # log2 domain; a finite mask stays finite (finfo.min * log2 e would overflow to -inf and turn
            # a fully masked row into 0/0 instead of a uniform average)
            val = val + T.Select(mk >= T.float32(_NEG_MAX), T.max(mk * T.float32(_LOG2E), T.float32(_NEG_MAX)),
                                 T.float32(-math.inf))
        conds = []
        if ragged_kv:
            conds.append(kt * TK + j < LKV)
        if causal:
            # Top-left aligned causal (ONNX is_causal, torch): key j visible to query i iff j <= i.
            conds.append(kt * TK + j <= qt * TQ + T.min(r, R - 1) % TQ)
        if not conds:
            return val
        ok = conds[0] if len(conds) == 1 else tvm.tirx.all(*conds)
        return T.Select(ok, val, T.float32(-math.inf))

    def kv_tiles(qt: Any) -> Any:
        if not causal:
            return NKT
        return T.min((T.min((qt + 1) * TQ, LQ) + TK - 1) // TK, NKT)

    def v_vec(b: Any, kvh: Any, kt: Any, j: Any, c: Any, v: Any, vp: Any) -> Any:
        if v_in_place:
            return v[b, kvh, key(kt, j), T.ramp(c * L, 1, L)]
        return vp[j, T.ramp(c * L, 1, L)]

    @T.macro
    def row_block(q: Any, k: Any, v: Any, mask: Any, qt_buf: Any, acc: Any, m: Any, lsum: Any, st: Any,
                  mx: Any, alpha: Any, psum: Any, sacc: Any, oacc: Any, vp: Any,
                  b: Any, kvh: Any, qt: Any, kt: Any, r0: Any, rv: int, pr: int) -> None:
        # S^T = K Q^T for rv * L rows: JB keys x rv row vectors of accumulators over the head dim.
        for c in T.unroll(rv):
            mx[c, T.ramp(0, 1, L)] = m[T.ramp(r0 + c * L, 1, L)]
        for jc in T.serial(TK // JB):
            for jj in T.unroll(JB):
                for c in T.unroll(rv):
                    sacc[jj, c, T.ramp(0, 1, L)] = zero
            for d in T.serial(D):
                for jj in T.unroll(JB):
                    for c in T.unroll(rv):
                        sacc[jj, c, T.ramp(0, 1, L)] = _fma(
                            sacc[jj, c, T.ramp(0, 1, L)],
                            T.Broadcast(T.Cast("float32", k[b, kvh, key(kt, jc * JB + jj), d]), L),
                            qt_buf[d, T.ramp(r0 + c * L, 1, L)], L)
            for jj in T.unroll(JB):
                for c in T.unroll(rv):
                    for lane in T.vectorized(L):
                        st[jc * JB + jj, c * L + lane] = score(b, kvh, qt, kt, r0 + c * L + lane, jc * JB + jj,
                                                               sacc[jj, c, lane], mask)
                        mx[c, lane] = T.max(mx[c, lane], st[jc * JB + jj, c * L + lane])
        # Online softmax, vertical over rows: P = exp(S - max), row sums, alpha = exp(m_old - m_new).
        for c in T.unroll(rv):
            for lane in T.vectorized(L):
                alpha[c * L + lane] = _exp2(m[r0 + c * L + lane] - mx[c, lane])
                m[r0 + c * L + lane] = mx[c, lane]
                psum[c, lane] = T.float32(0.0)
        for j in T.serial(TK):
            for c in T.unroll(rv):
                for lane in T.vectorized(L):
                    st[j, c * L + lane] = _exp2(st[j, c * L + lane] - mx[c, lane])
                    psum[c, lane] = psum[c, lane] + st[j, c * L + lane]
        for c in T.unroll(rv):
            for lane in T.vectorized(L):
                lsum[r0 + c * L + lane] = lsum[r0 + c * L + lane] * alpha[c * L + lane] + psum[c, lane]
        # O = alpha * O + P V: pr rows x PW head-dim vectors per register tile.
        for rg in T.serial(rv * L // pr):
            for dc in T.serial(NDC):
                for r in T.unroll(pr):
                    for c in T.unroll(PW):
                        oacc[r, c, T.ramp(0, 1, L)] = acc[r0 + rg * pr + r, T.ramp((dc * PW + c) * L, 1, L)] * \
                            T.Broadcast(alpha[rg * pr + r], L)
                for j in T.serial(TK):
                    for r in T.unroll(pr):
                        for c in T.unroll(PW):
                            oacc[r, c, T.ramp(0, 1, L)] = _fma(
                                oacc[r, c, T.ramp(0, 1, L)], T.Broadcast(st[j, rg * pr + r], L),
                                v_vec(b, kvh, kt, j, dc * PW + c, v, vp), L)
                for r in T.unroll(pr):
                    for c in T.unroll(PW):
                        acc[r0 + rg * pr + r, T.ramp((dc * PW + c) * L, 1, L)] = oacc[r, c, T.ramp(0, 1, L)]

    mask_shape = list(spec.mask_shape) if has_mask else [1, 1, 1, 1]
    outer = T.parallel if knobs.parallel else T.serial
    PR = _PV_ROWS
    PR_TAIL = PR if RV_TAIL * L % PR == 0 else L // 2

    @T.prim_func(s_tir=True)
    def attention(
        q: T.Buffer((B, HQ, LQ, D), dtype),
        k: T.Buffer((B, HKV, LKV, D), dtype),
        v: T.Buffer((B, HKV, LKV, D), dtype),
        mask: T.Buffer(mask_shape, dtype),
        out: T.Buffer((B, HQ, LQ, D), dtype),
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        for task in outer(B * HKV * NQT):
            with T.sblock("task"):
                T.reads()
                T.writes()
                qt_buf = T.sblock_alloc_buffer((D, RP), "float32")
                acc = T.sblock_alloc_buffer((RP, DP), "float32")
                m = T.sblock_alloc_buffer((RP,), "float32")
                lsum = T.sblock_alloc_buffer((RP,), "float32")
                st = T.sblock_alloc_buffer((TK, RW), "float32")
                vp = T.sblock_alloc_buffer((TK if not v_in_place else 1, DP), "float32")
                mx = T.sblock_alloc_buffer((RV, L), "float32", scope="local")
                alpha = T.sblock_alloc_buffer((RW,), "float32")
                psum = T.sblock_alloc_buffer((RV, L), "float32", scope="local")
                sacc = T.sblock_alloc_buffer((JB, RV, L), "float32", scope="local")
                oacc = T.sblock_alloc_buffer((PR, PW, L), "float32", scope="local")
                b = task // (HKV * NQT)
                kvh = (task // NQT) % HKV
                qt = task % NQT
                for r in T.serial(RP):  # row outer: the row's head and query index are computed once
                    if r < R:
                        for d in T.serial(D):
                            qt_buf[d, r] = T.Cast("float32", q[b, head_row(kvh, r), q_of(qt, r), d]) * T.float32(qscale)
                    else:
                        for d in T.serial(D):
                            qt_buf[d, r] = T.float32(0.0)
                for r in T.serial(RP):
                    for d in T.vectorized(DP):
                        acc[r, d] = T.float32(0.0)
                    m[r] = T.float32(_NEG_MAX)
                    lsum[r] = T.float32(0.0)
                for kt in T.serial(kv_tiles(qt)):
                    if not v_in_place:  # V tile copied with the head dim zero padded (and cast to fp32)
                        for j in T.serial(TK):
                            for d in T.serial(DP):
                                vp[j, d] = T.if_then_else(
                                    d < D, T.Cast("float32", v[b, kvh, T.min(kt * TK + j, LKV - 1), T.min(d, D - 1)]),
                                    T.float32(0.0))
                    for rb in T.serial(NFULL):
                        row_block(q, k, v, mask, qt_buf, acc, m, lsum, st, mx, alpha, psum, sacc, oacc, vp,
                                  b, kvh, qt, kt, rb * RW, RV, PR)
                    if RV_TAIL > 0:
                        row_block(q, k, v, mask, qt_buf, acc, m, lsum, st, mx, alpha, psum, sacc, oacc, vp,
                                  b, kvh, qt, kt, NFULL * RW, RV_TAIL, PR_TAIL)
                for r in T.serial(R):
                    if qt * TQ + r % TQ < LQ:
                        for d in T.serial(D):
                            out[b, head_of(kvh, r // TQ), qt * TQ + r % TQ, d] = T.Cast(dtype, acc[r, d] / lsum[r])

    return attention.with_attr("banana.kernel", "attention").with_attr("banana.knobs", str(knobs.to_json()))


def _wide_primfunc(spec: AttentionSpec, knobs: AttentionKnobs) -> tvm.tirx.PrimFunc:
    """Row-at-a-time variant: each loop vectorised over a whole score row (``tile_kv`` lanes) or head
    dim, so a target with wide vectors (Hexagon HVX: 32 fp32 lanes) gets full-width ops from LLVM,
    where the 8-lane register tiles of :func:`attention_primfunc` would not fill a register."""
    TQ, TK = knobs.tile_q, knobs.tile_kv
    B, HQ, HKV, LQ, LKV, D, G, NQT, NKT, R = tile_geometry(spec, TQ, TK)
    LANES = _LANES
    if TK % LANES:
        from banana.compiler.errors import BadConfigError

        raise BadConfigError(f"AttentionKnobs.tile_kv={TK} is not a multiple of {LANES}")
    dtype = spec.dtype
    scale = float(spec.scale)
    causal = bool(spec.causal)
    has_mask = spec.mask_shape is not None

    head_of, mask_value = head_and_mask_readers(spec)

    def q_row(qt: Any, r: Any) -> Any:
        """Clamped query row of tile row ``r`` (tail rows recompute the last row, never stored)."""
        return T.min(qt * TQ + r % TQ, LQ - 1)

    def kv_row(kt: Any, j: Any) -> Any:
        """Clamped key row (tail keys are masked to -inf, so their values never count)."""
        return T.min(kt * TK + j, LKV - 1)

    def valid(j: Any, i: Any) -> Any:
        ok = j < LKV
        return tvm.tirx.all(ok, j <= i) if causal else ok

    def kv_tiles(qt: Any) -> Any:
        if not causal:
            return NKT
        # Top-left aligned causal (ONNX is_causal, torch): key j visible to query i iff j <= i.
        return T.min((T.min((qt + 1) * TQ, LQ) + TK - 1) // TK, NKT)

    mask_shape = list(spec.mask_shape) if has_mask else [1, 1, 1, 1]
    outer = T.parallel if knobs.parallel else T.serial

    @T.prim_func(s_tir=True)
    def attention(
        q: T.Buffer((B, HQ, LQ, D), dtype),
        k: T.Buffer((B, HKV, LKV, D), dtype),
        v: T.Buffer((B, HKV, LKV, D), dtype),
        mask: T.Buffer(mask_shape, dtype),
        out: T.Buffer((B, HQ, LQ, D), dtype),
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        for task in outer(B * HKV * NQT):
            with T.sblock("task"):
                T.reads()
                T.writes()
                qs = T.sblock_alloc_buffer((R, D), "float32")
                acc = T.sblock_alloc_buffer((R, D), "float32")
                m = T.sblock_alloc_buffer((R,), "float32")
                lsum = T.sblock_alloc_buffer((R,), "float32")
                s = T.sblock_alloc_buffer((R, TK), "float32")
                kt_buf = T.sblock_alloc_buffer((D, TK), "float32")
                red = T.sblock_alloc_buffer((2,), "float32")
                part = T.sblock_alloc_buffer((LANES,), "float32")
                b = task // (HKV * NQT)
                kvh = (task // NQT) % HKV
                qt = task % NQT
                for r in T.serial(R):
                    for d in T.vectorized(D):
                        qs[r, d] = T.Cast("float32", q[b, head_of(kvh, r // TQ), q_row(qt, r), d]) * T.float32(scale)
                        acc[r, d] = T.float32(0.0)
                    m[r] = T.float32(_NEG_MAX)
                    lsum[r] = T.float32(0.0)
                for kt in T.serial(kv_tiles(qt)):
                    for j in T.serial(TK):
                        for d in T.serial(D):
                            kt_buf[d, j] = T.Cast("float32", k[b, kvh, T.min(kt * TK + j, LKV - 1), d])
                    for r in T.serial(R):
                        with T.sblock("score_row"):
                            T.reads()
                            T.writes()
                            srow = T.sblock_alloc_buffer((TK,), "float32")
                            for j in T.vectorized(TK):
                                srow[j] = T.float32(0.0)
                            for d in T.serial(D):
                                for j in T.vectorized(TK):
                                    srow[j] = srow[j] + qs[r, d] * kt_buf[d, j]
                            for j in T.vectorized(TK):
                                s[r, j] = T.Select(
                                    valid(kt * TK + j, qt * TQ + r % TQ),
                                    srow[j] + mask_value(b, head_of(kvh, r // TQ), T.min(qt * TQ + r % TQ, LQ - 1),
                                                         T.min(kt * TK + j, LKV - 1), mask),
                                    T.float32(-math.inf),
                                )
                    for r in T.serial(R):
                        # Row max and sum in LANES-wide partials: short dependency chains.
                        for lane in T.vectorized(LANES):
                            part[lane] = m[r]
                        for j0 in T.serial(TK // LANES):
                            for lane in T.vectorized(LANES):
                                part[lane] = T.max(part[lane], s[r, j0 * LANES + lane])
                        red[0] = part[0]
                        for lane in T.serial(LANES - 1):
                            red[0] = T.max(red[0], part[lane + 1])
                        for lane in T.vectorized(LANES):
                            part[lane] = T.float32(0.0)
                        for j0 in T.serial(TK // LANES):
                            for lane in T.vectorized(LANES):
                                s[r, j0 * LANES + lane] = _exp(s[r, j0 * LANES + lane] - red[0])
                                part[lane] = part[lane] + s[r, j0 * LANES + lane]
                        red[1] = part[0]
                        for lane in T.serial(LANES - 1):
                            red[1] = red[1] + part[lane + 1]
                        with T.sblock("pv_row"):
                            T.reads()
                            T.writes()
                            orow = T.sblock_alloc_buffer((D,), "float32")
                            alpha = T.sblock_alloc_buffer((1,), "float32")
                            alpha[0] = _exp(m[r] - red[0])
                            lsum[r] = lsum[r] * alpha[0] + red[1]
                            m[r] = red[0]
                            for d in T.vectorized(D):
                                orow[d] = acc[r, d] * alpha[0]
                            for j in T.serial(TK):
                                for d in T.vectorized(D):
                                    orow[d] = orow[d] + s[r, j] * T.Cast("float32", v[b, kvh, kv_row(kt, j), d])
                            for d in T.vectorized(D):
                                acc[r, d] = orow[d]
                for r in T.serial(R):
                    if qt * TQ + r % TQ < LQ:
                        for d in T.vectorized(D):
                            out[b, head_of(kvh, r // TQ), qt * TQ + r % TQ, d] = T.Cast(dtype, acc[r, d] / lsum[r])

    return attention.with_attr("banana.kernel", "attention").with_attr("banana.knobs", str(knobs.to_json()))
