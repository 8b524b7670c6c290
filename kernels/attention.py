"""Fused (grouped-query) attention for LLVM CPU targets: one TVMScript kernel per attention site.

Why a kernel of our own: TVM's default lowering of decomposed attention materialises the repeated
K/V heads and the full Lq x Lkv score matrix (hundreds of MB at 4K tokens). This kernel

- reads each K/V head once per *group*: one parallel task owns (batch, kv head, q tile) and
  computes all ``group`` query heads that share that kv head, so a K/V tile loaded into cache
  serves every query head of the group (no repeated K/V tensor exists);
- tiles flash-style with an online softmax: working memory per task is O(tile_q * group *
  (head_dim + tile_kv)), never O(Lq * Lkv);
- is written already scheduled (parallel outer loop, vectorised inner loops, register-sized
  accumulators) and marked ``tirx.is_scheduled`` so dlight and MetaSchedule leave it alone;
  its schedule knobs (:class:`AttentionKnobs`) are plain data a tuner can sweep.

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
# Width of the partial row reductions (8 fp32 = one AVX2 register, two NEON registers).
_LANES = 8


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
    K/V tile), ``tile_kv`` keys per online-softmax step (the vectorised width of a score row).
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
    """Per-task scratch memory (fp32): independent of the sequence lengths."""
    rows = spec.group * knobs.tile_q
    return 4 * (rows * spec.head_dim * 2 + rows * knobs.tile_kv + spec.head_dim * knobs.tile_kv + 2 * rows)


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


def attention_primfunc(spec: AttentionSpec, knobs: AttentionKnobs | None = None) -> tvm.tirx.PrimFunc:
    """The scheduled fused-attention PrimFunc for ``spec`` (static shapes baked in)."""
    spec.validate()
    knobs = knobs or default_knobs(spec)
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
