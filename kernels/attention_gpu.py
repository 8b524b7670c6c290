"""Fused (grouped-query) attention for OpenCL GPUs (Adreno): work-groups share K/V tiles in local memory.

One work-group owns (batch, kv head, q tile); its ``group * tile_q`` work-items are the query
rows of every query head that shares that kv head. Per K/V tile the work-group loads ``tile_kv``
keys and values into local memory once (cooperatively, one barrier), and each work-item runs the
online softmax for its row out of private memory. So each K/V head is read from global memory
once per q tile for the whole group, and no Lq x Lkv buffer exists. Same layouts and semantics as
:mod:`banana.kernels.attention` (whose :class:`AttentionSpec` this takes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import tvm
from tvm.script import tirx as T

from banana.kernels.attention import _NEG_MAX, AttentionSpec, head_and_mask_readers, tile_geometry


@dataclass(frozen=True)
class GpuAttentionKnobs:
    """``tile_q`` rows per head per work-group (work-group size = group * tile_q), ``tile_kv``
    keys per local-memory tile."""

    tile_q: int = 16
    tile_kv: int = 32

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def default_gpu_knobs(spec: AttentionSpec) -> GpuAttentionKnobs:
    """Work-groups of 32..128 work-items; smaller q tiles for short sequences."""
    tile_q = 16
    while tile_q > 1 and (spec.group * tile_q > 128 or tile_q > spec.q_len):
        tile_q //= 2
    tile_kv = 32 if spec.kv_len >= 32 else max(1, spec.kv_len)
    return GpuAttentionKnobs(tile_q=tile_q, tile_kv=tile_kv)


def attention_primfunc_gpu(spec: AttentionSpec, knobs: GpuAttentionKnobs | None = None) -> tvm.tirx.PrimFunc:
    """The scheduled (thread-bound) fused-attention PrimFunc for ``spec`` on an OpenCL target."""
    spec.validate()
    knobs = knobs or default_gpu_knobs(spec)
    TQ, TK = knobs.tile_q, knobs.tile_kv
    B, HQ, HKV, LQ, LKV, D, G, NQT, NKT, R = tile_geometry(spec, TQ, TK)
    LOADS = (TK * D + R - 1) // R
    dtype = spec.dtype
    scale = float(spec.scale)
    causal = bool(spec.causal)
    has_mask = spec.mask_shape is not None
    mask_shape = list(spec.mask_shape) if has_mask else [1, 1, 1, 1]

    head_of, mask_value = head_and_mask_readers(spec)

    def valid(j: Any, i: Any) -> Any:
        ok = j < LKV
        return tvm.tirx.all(ok, j <= i) if causal else ok

    @T.prim_func(s_tir=True)
    def attention_gpu(
        q: T.Buffer((B, HQ, LQ, D), dtype),
        k: T.Buffer((B, HKV, LKV, D), dtype),
        v: T.Buffer((B, HKV, LKV, D), dtype),
        mask: T.Buffer(mask_shape, dtype),
        out: T.Buffer((B, HQ, LQ, D), dtype),
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        for wg in T.thread_binding(B * HKV * NQT, thread="blockIdx.x"):
            for tx in T.thread_binding(R, thread="threadIdx.x"):
                with T.sblock("work_item"):
                    T.reads()
                    T.writes()
                    k_sh = T.sblock_alloc_buffer((TK, D), "float32", scope="shared")
                    v_sh = T.sblock_alloc_buffer((TK, D), "float32", scope="shared")
                    q_loc = T.sblock_alloc_buffer((D,), "float32", scope="local")
                    acc = T.sblock_alloc_buffer((D,), "float32", scope="local")
                    s_loc = T.sblock_alloc_buffer((TK,), "float32", scope="local")
                    st = T.sblock_alloc_buffer((4,), "float32", scope="local")  # m, l, tile max, tile sum
                    b = wg // (HKV * NQT)
                    kvh = (wg // NQT) % HKV
                    qt = wg % NQT
                    row = T.min(qt * TQ + tx % TQ, LQ - 1)
                    h = head_of(kvh, tx // TQ)
                    for d in T.serial(D):
                        q_loc[d] = T.Cast("float32", q[b, h, row, d]) * T.float32(scale)
                        acc[d] = T.float32(0.0)
                    st[0] = T.float32(_NEG_MAX)
                    st[1] = T.float32(0.0)
                    for kt in T.serial(NKT):
                        for e in T.serial(LOADS):
                            if tx + e * R < TK * D:
                                k_sh[(tx + e * R) // D, (tx + e * R) % D] = T.Cast(
                                    "float32", k[b, kvh, T.min(kt * TK + (tx + e * R) // D, LKV - 1), (tx + e * R) % D])
                                v_sh[(tx + e * R) // D, (tx + e * R) % D] = T.Cast(
                                    "float32", v[b, kvh, T.min(kt * TK + (tx + e * R) // D, LKV - 1), (tx + e * R) % D])
                        T.tvm_storage_sync("shared")
                        st[2] = st[0]
                        for j in T.serial(TK):
                            s_loc[j] = T.float32(0.0)
                            for d in T.serial(D):
                                s_loc[j] = s_loc[j] + q_loc[d] * k_sh[j, d]
                            s_loc[j] = T.Select(
                                valid(kt * TK + j, qt * TQ + tx % TQ),
                                s_loc[j] + mask_value(b, h, row, T.min(kt * TK + j, LKV - 1), mask),
                                T.float32(-math.inf),
                            )
                            st[2] = T.max(st[2], s_loc[j])
                        st[3] = T.float32(0.0)
                        for j in T.serial(TK):
                            s_loc[j] = T.exp(s_loc[j] - st[2])
                            st[3] = st[3] + s_loc[j]
                        for d in T.serial(D):
                            acc[d] = acc[d] * T.exp(st[0] - st[2])
                        st[1] = st[1] * T.exp(st[0] - st[2]) + st[3]
                        st[0] = st[2]
                        for j in T.serial(TK):
                            for d in T.serial(D):
                                acc[d] = acc[d] + s_loc[j] * v_sh[j, d]
                        T.tvm_storage_sync("shared")
                    if qt * TQ + tx % TQ < LQ:
                        for d in T.serial(D):
                            out[b, h, qt * TQ + tx % TQ, d] = T.Cast(dtype, acc[d] / st[1])

    return (
        attention_gpu.with_attr("banana.kernel", "attention_gpu")
        .with_attr("banana.schedule_rule", "banana.attention")  # read by the adreno build report
        .with_attr("banana.knobs", str(knobs.to_json()))
    )
