"""Weight-only INT8/INT4 GEMM for Adreno (OpenCL): weights dequantised in registers, FP16 accumulation.

``C[i, j] = sum_k A[i, k] * (S[j, g(k)] * int(W[j, k]))`` with float activations ``A [m, k]`` and
integer weights ``W [n, k]`` (int8, or int4 packed two per byte as :func:`banana.kernels.int_gemm.pack_int4`
does). Why a kernel: on a phone GPU the nano DiT's linears (m <= 16 tokens) are bound by weight
bytes, so the win of INT8/INT4 is reading 2x/4x fewer bytes than fp16 -- which is lost if the weights
are first dequantised into a float buffer in global memory (what TVM's legalised ``R.dequantize``
does). Here the integer bytes travel from global memory straight into registers.

Schedule (one work-group = ``tile_m`` rows x ``tile_n`` columns of C; ``threads_n x threads_m``
work-items, each owning ``rows_per_thread x cols_per_thread`` outputs):

1. per k tile of ``k_tile`` elements the work-group copies A's ``tile_m x k_tile`` block into local
   memory (coalesced, converted to the accumulation type, zero past k; for int4 split into even and
   odd k so that both nibble halves meet a contiguous vector of A);
2. each work-item steps through k 8 at a time: it reads its column's weights with vector loads (two
   ``vload4`` of ``char4`` for int8; one ``vload4`` of ``uchar4`` = 8 nibbles for int4) into a private
   byte array, dequantises them there (int4: ``<< 4`` and an arithmetic ``>> 4`` on ``char`` lanes
   sign-extend the low nibbles, ``>> 4`` alone the high ones; ``convert_half4``; times the scale) into
   two 4-lane halves and multiply-accumulates them into ``rows_per_thread`` 4-lane accumulators,
   reusing each dequantised weight vector for all its rows. Dequantised weights live only in private
   registers.
3. lanes are summed once at the end; rows/columns past m/n are computed from clamped reads and not
   stored.

The vector width is the widest of 4/2/1 bytes that divides the W row (and the scale group): TVM emits
``vload`` only for offsets it can prove are multiples of the width. Ragged k is zero-padded in A's
local tile (int4's odd-k tail nibble is 0 by the packing contract).

Accumulation: ``float16`` by default for fp16 activations -- the point of an fp16 GPU path (Adreno's
ALUs are documented to run half at twice the float rate -- not measured here -- and the accumulators
take half the registers). Weights
are dequantised per element before the multiply (not scaled once per group at the end) so that
products have the magnitudes of the float model's products: ``A * int(W)`` alone reaches 127x the
activation and an fp16 running sum of those overflows (65504) at the nano DiT's K = 256. Each of the
4 lanes sums K/4 products, so the rounding error grows like an fp16 dot product of length K/4;
``NOTES_wo_gemm_adreno.md`` measures it at the nano DiT's K against the quantisation error itself.
``accumulate="float32"`` widens A and the dequantised weights and accumulates in fp32 (C is still
``act_dtype``) for layers where that is too much. PoCL (the only OpenCL device here) has no
``cl_khr_fp16``, so float32 activations are supported too and are what the tests run.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import tvm
from tvm.script import tirx as T

from banana.compiler.errors import BadConfigError

from .int_gemm import w_shape

logger = logging.getLogger(__name__)

ACT_DTYPES = ("float16", "float32")
W_BITS = (4, 8)
KERNEL_NAME = "wo_gemm_adreno"


@dataclass(frozen=True)
class WoGemmKnobs:
    """Work-group geometry: ``threads_n x threads_m`` work-items, each ``rows_per_thread x
    cols_per_thread`` outputs; ``k_tile`` k per local-memory tile of A."""

    rows_per_thread: int = 8
    cols_per_thread: int = 1
    threads_n: int = 32
    threads_m: int = 1
    k_tile: int = 64

    @property
    def tile_m(self) -> int:
        return self.rows_per_thread * self.threads_m

    @property
    def tile_n(self) -> int:
        return self.cols_per_thread * self.threads_n

    @property
    def threads(self) -> int:
        return self.threads_n * self.threads_m

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def default_knobs(m: int, n: int, k: int, w_bits: int = 8) -> WoGemmKnobs:
    """Skinny-m defaults (the nano DiT has m <= 16 tokens): every work-item keeps up to 8 rows, so
    a weight vector is read once per 8 rows; 32 columns x up to 16 rows per work-group (64
    work-items, 4 work-groups at n = 128); A tiles of 64 k (16 x 64 x 4 B = 4 KiB of local memory).
    Not tuned on a phone: PoCL timings (a CPU) do not rank Adreno schedules."""
    rows = min(m, 8)
    threads_m = min(-(-m // rows), 2)
    threads_n = 32 if n > 16 else 16
    k_tile = 64 if k >= 64 else -(-k // 8) * 8
    return WoGemmKnobs(rows_per_thread=rows, cols_per_thread=1, threads_n=threads_n, threads_m=threads_m,
                       k_tile=k_tile)


def vector_bytes(k: int, w_bits: int, group: int) -> int:
    """Bytes of W per vector load: the widest of 4/2/1 that divides the W row and keeps a load
    inside one scale group (TVM emits ``vloadN`` only at offsets provably multiple of N)."""
    row_bytes = w_shape(1, k, w_bits)[1]
    per_byte = 2 if w_bits == 4 else 1
    for vb in (4, 2, 1):
        if row_bytes % vb == 0 and (group == 0 or group % (vb * per_byte) == 0):
            return vb
    raise BadConfigError(f"wo_gemm: no vector width fits k={k}, w_bits={w_bits}, group={group}")


def check_args(m: int, n: int, k: int, w_bits: int, group: int, act_dtype: str, accumulate: str) -> None:
    """Interface checks; a bad combination is a BadConfigError naming the argument."""
    for name, v in (("m", m), ("n", n), ("k", k)):
        if not isinstance(v, int) or v <= 0:
            raise BadConfigError(f"wo_gemm: {name}={v!r} must be a positive int")
    if w_bits not in W_BITS:
        raise BadConfigError(f"wo_gemm: w_bits={w_bits!r}; expected one of {W_BITS}")
    if act_dtype not in ACT_DTYPES:
        raise BadConfigError(f"wo_gemm: act_dtype={act_dtype!r}; expected one of {ACT_DTYPES}")
    if accumulate not in ACT_DTYPES:
        raise BadConfigError(f"wo_gemm: accumulate={accumulate!r}; expected one of {ACT_DTYPES}")
    if act_dtype == "float32" and accumulate == "float16":
        raise BadConfigError("wo_gemm: float16 accumulation of float32 activations is not offered")
    if not isinstance(group, int) or group < 0 or (group > 0 and k % group):
        raise BadConfigError(f"wo_gemm: group={group!r} must be 0 or a divisor of k={k}")
    if w_bits == 4 and group % 2:
        raise BadConfigError(f"wo_gemm: int4 weights need an even group (a byte holds two k), got {group}")


def _check_knobs(knobs: WoGemmKnobs, target: tvm.target.Target, acc_bytes: int) -> None:
    for name, v in knobs.to_json().items():
        if v <= 0:
            raise BadConfigError(f"wo_gemm: knob {name}={v} must be positive")
    if knobs.k_tile % 8:
        raise BadConfigError(f"wo_gemm: k_tile={knobs.k_tile} must be a multiple of 8 (int4 vectors hold 8 k)")
    max_threads = int(target.attrs.get("max_threads_per_block", 256))
    if knobs.threads > max_threads:
        raise BadConfigError(f"wo_gemm: {knobs.threads} work-items per work-group exceed the target's {max_threads}")
    shared = knobs.tile_m * knobs.k_tile * acc_bytes
    max_shared = int(target.attrs.get("max_shared_memory_per_block", 16384))
    if shared > max_shared:
        raise BadConfigError(f"wo_gemm: A tile of {shared} B exceeds the target's {max_shared} B of local memory")


def _vec(dtype: str, lanes: int) -> str:
    return dtype if lanes == 1 else f"{dtype}x{lanes}"


def _ramp(start: Any, lanes: int) -> Any:
    return start if lanes == 1 else T.Ramp(start, 1, lanes)


def _bcast(value: Any, lanes: int) -> Any:
    return value if lanes == 1 else T.Broadcast(value, lanes)


def weight_only_gemm_primfunc(
    m: int,
    n: int,
    k: int,
    *,
    target: tvm.target.Target,
    w_bits: int = 8,
    group: int = 0,
    act_dtype: str = "float16",
    accumulate: str | None = None,
    scale_dtype: str = "float16",
    knobs: WoGemmKnobs | None = None,
) -> tvm.tirx.PrimFunc:
    """Weight-only quantized GEMM, params (A, W, S, C):  C[i, j] = sum_k A[i, k] * (S[j, g(k)] * int(W[j, k]))

    A: act_dtype [m, k]; W: int8 [n, k] (w_bits 8) or uint8 [n, (k+1)//2] two signed nibbles per byte, low
    nibble = even k (w_bits 4; same packing as banana.kernels.int_gemm.pack_int4); S: float16 scales [n]
    (group 0 = per output channel) or [n, k // group] (block-wise along k); C: act_dtype [m, n].

    Weights are dequantised in registers (never written to global memory as float). ``accumulate``
    defaults to ``act_dtype`` (fp16 accumulation for fp16 activations; see the module docstring);
    ``"float32"`` accumulates fp16 activations in fp32. ``scale_dtype="float32"`` (float32 activations
    only) takes S as float32: the variant without any ``half`` in its OpenCL C, which is what runs on
    PoCL (no ``cl_khr_fp16``). Returns a scheduled PrimFunc (thread-bound,
    ``tirx.is_scheduled``) without global_symbol, for an OpenCL ``target`` such as
    :func:`banana.targets.opencl.adreno_target`.
    """
    accumulate = accumulate or act_dtype
    check_args(m, n, k, w_bits, group, act_dtype, accumulate)
    if scale_dtype not in ACT_DTYPES or (scale_dtype == "float32" and act_dtype != "float32"):
        raise BadConfigError(f"wo_gemm: scale_dtype={scale_dtype!r}; float16, or float32 with float32 activations")
    if isinstance(target, (dict, str)):
        target = tvm.target.Target(target)
    if target.kind.name != "opencl":
        raise BadConfigError(f"wo_gemm_adreno: target kind is {target.kind.name!r}, this kernel needs 'opencl'")
    knobs = knobs or default_knobs(m, n, k, w_bits)
    acc_bytes = 2 if accumulate == "float16" else 4
    _check_knobs(knobs, target, acc_bytes)

    RM, CN, TX, TY, BK = knobs.rows_per_thread, knobs.cols_per_thread, knobs.threads_n, knobs.threads_m, knobs.k_tile
    TM, TN, R = knobs.tile_m, knobs.tile_n, knobs.threads
    int4 = w_bits == 4
    VB = vector_bytes(k, w_bits, group)  # bytes per W load = lanes of every vector below
    VK = 2 * VB  # k per step: two VB-lane halves (int4: low/high nibbles of VB bytes; int8: 2 x VB bytes)
    WQ = VB if int4 else 2 * VB  # W bytes per step
    NV = BK // VK  # steps per k tile and column
    NKT = -(-k // BK)
    LOADS = -(-(TM * BK) // R)  # A elements each work-item copies per k tile
    K_RAGGED = k % BK != 0
    acc = accumulate
    acc_v = _vec(acc, VB)
    w_dtype = "uint8" if int4 else "int8"
    w_shape_ = w_shape(n, k, w_bits)
    s_shape = [n] if group == 0 else [n, k // group]
    a_sh_shape = [TM, 2, BK // 2] if int4 else [TM, BK]

    BKB = BK // (2 if int4 else 1)  # W bytes per k tile and row

    def in_k(kt: Any, v: Any, half: int = 0) -> Any:
        """Whether half ``half`` of step ``v`` of k tile ``kt`` holds any k < K (static True unless K is
        ragged; an int4 step's halves share their bytes, so only the first half is ever tested)."""
        return kt * BK + v * VK + half * VB < k if K_RAGGED else T.bool(True)

    def scale(s: Any, j: Any, kt: Any, v: Any, half: int) -> Any:
        """S[j, g(k)] for the k of one half (int4: a step never straddles a group, vector_bytes ensures it)."""
        value = s[j] if group == 0 else s[j, (kt * BK + v * VK + (0 if int4 else half * VB)) // group]
        return value if scale_dtype == acc else T.Cast(acc, value)

    def a_store(a_sh: Any, e: Any, value: Any) -> Any:
        if int4:
            return T.buffer_store(a_sh, value, [e // BK, e % BK % 2, e % BK // 2])
        return T.buffer_store(a_sh, value, [e // BK, e % BK])

    def a_vec(a_sh: Any, r: Any, v: Any, half: int) -> Any:
        """The A lanes that meet weight half ``half`` of step ``v`` (int4: the even or odd k)."""
        if int4:
            return a_sh[r, half, _ramp(v * VB, VB)]
        return a_sh[r, _ramp(v * VK + half * VB, VB)]

    def w_load(w: Any, j: Any, kt: Any, v: Any, half: int) -> Any:
        return w[j, _ramp(kt * BKB + v * WQ + half * VB, VB)]

    def dequant(wq: Any, s: Any, half: int) -> Any:
        """int8 lanes -> acc lanes x scale; int4: sign-extend one nibble of each byte in registers
        (``<< 4`` on uchar lanes, then an arithmetic ``>> 4`` on the same bits read as char)."""
        if not int4:
            return T.Cast(acc_v, wq[_ramp(half * VB, VB)]) * _bcast(s, VB)
        byte = wq[_ramp(0, VB)] if half else wq[_ramp(0, VB)] << _bcast(T.uint8(4), VB)
        return T.Cast(acc_v, T.reinterpret(_vec("int8", VB), byte) >> _bcast(T.int8(4), VB)) * _bcast(s, VB)

    def lane_sum(accs: Any, r: int, c: int) -> Any:
        total = accs[r, c, 0]
        for lane in range(1, VB):
            total = total + accs[r, c, lane]
        return total

    def mac(accs: Any, a_sh: Any, wv: Any, row: Any, r: Any, cc: Any, v: Any) -> Any:
        """accs[r, cc] += A tile row x dequantised weights (both nibble halves for int4)."""
        total = accs[r, cc, _ramp(0, VB)] + a_vec(a_sh, row, v, 0) * wv[0, _ramp(0, VB)]
        return total + a_vec(a_sh, row, v, 1) * wv[1, _ramp(0, VB)]

    zero = T.Cast(acc, T.float32(0.0))
    logger.debug("wo_gemm %dx%dx%d int%d group %d: %s, %d-byte weight loads, %d x %d work-groups", m, n, k,
                 w_bits, group, knobs, VB, -(-n // TN), -(-m // TM))

    @T.prim_func(s_tir=True)
    def wo_gemm(
        A: T.Buffer((m, k), act_dtype),
        W: T.Buffer(w_shape_, w_dtype),
        S: T.Buffer(s_shape, scale_dtype),
        C: T.Buffer((m, n), act_dtype),
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        for bn in T.thread_binding(-(-n // TN), thread="blockIdx.x"):
            for bm in T.thread_binding(-(-m // TM), thread="blockIdx.y"):
                for ty in T.thread_binding(TY, thread="threadIdx.y"):
                    for tx in T.thread_binding(TX, thread="threadIdx.x"):
                        with T.sblock("work_item"):
                            T.reads()
                            T.writes()
                            a_sh = T.sblock_alloc_buffer(a_sh_shape, acc, scope="shared")
                            accs = T.sblock_alloc_buffer((RM, CN, VB), acc, scope="local")
                            wq = T.sblock_alloc_buffer((WQ,), w_dtype, scope="local")
                            wv = T.sblock_alloc_buffer((2, VB), acc, scope="local")
                            sc = T.sblock_alloc_buffer((2,), acc, scope="local")
                            for r in T.unroll(RM):
                                for cc in T.unroll(CN):
                                    accs[r, cc, _ramp(0, VB)] = _bcast(zero, VB)
                            for kt in T.serial(NKT):
                                # 1. A's [tile_m, k_tile] block -> local memory (zero past k)
                                for e in T.serial(LOADS):
                                    if ty * TX + tx + e * R < TM * BK:
                                        a_store(
                                            a_sh, ty * TX + tx + e * R,
                                            T.Select(
                                                kt * BK + (ty * TX + tx + e * R) % BK < k,
                                                T.Cast(acc, A[T.min(bm * TM + (ty * TX + tx + e * R) // BK, m - 1),
                                                              T.min(kt * BK + (ty * TX + tx + e * R) % BK, k - 1)]),
                                                zero,
                                            ),
                                        )
                                T.tvm_storage_sync("shared")
                                # 2. W vector -> registers, dequantise, multiply-accumulate over the rows
                                for v in T.serial(NV):
                                    if in_k(kt, v):
                                        for cc in T.unroll(CN):
                                            wq[_ramp(0, VB)] = w_load(W, T.min(bn * TN + cc * TX + tx, n - 1), kt, v, 0)
                                            sc[0] = scale(S, T.min(bn * TN + cc * TX + tx, n - 1), kt, v, 0)
                                            wv[0, _ramp(0, VB)] = dequant(wq, sc[0], 0)
                                            if int4:
                                                wv[1, _ramp(0, VB)] = dequant(wq, sc[0], 1)
                                            elif in_k(kt, v, 1):
                                                wq[_ramp(VB, VB)] = w_load(
                                                    W, T.min(bn * TN + cc * TX + tx, n - 1), kt, v, 1)
                                                if group > 0:  # per-channel: the scale is already in sc[0]
                                                    sc[1] = scale(S, T.min(bn * TN + cc * TX + tx, n - 1), kt, v, 1)
                                                wv[1, _ramp(0, VB)] = dequant(wq, sc[1 if group > 0 else 0], 1)
                                            else:
                                                wv[1, _ramp(0, VB)] = _bcast(zero, VB)
                                            for r in T.unroll(RM):
                                                accs[r, cc, _ramp(0, VB)] = mac(accs, a_sh, wv, ty * RM + r, r, cc, v)
                                T.tvm_storage_sync("shared")
                            # 3. lane sums -> C (rows/columns past m/n are not stored)
                            for r in T.unroll(RM):
                                for cc in T.unroll(CN):
                                    if bm * TM + ty * RM + r < m and bn * TN + cc * TX + tx < n:
                                        C[bm * TM + ty * RM + r, bn * TN + cc * TX + tx] = T.Cast(
                                            act_dtype, lane_sum(accs, r, cc))

    return (
        wo_gemm.with_attr("banana.kernel", KERNEL_NAME)
        .with_attr("banana.schedule_rule", "banana.wo_gemm")
        .with_attr(
            "banana.knobs",
            str({**knobs.to_json(), "w_bits": w_bits, "group": group, "accumulate": acc, "vector_bytes": VB}),
        )
    )
