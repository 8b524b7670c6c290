"""The attention fusion pass: every matched site becomes one call of banana's fused kernel.

Why: TVM's stock lowering materialises repeated K/V heads and the full Lq x Lkv scores; the fused
kernel (banana.kernels.attention) reads each K/V head once per group with O(tile) memory. The
pass also records, per site, what it found and the K/V traffic saved, for the latency/thermal
reports; sites that look like attention but cannot be fused safely are kept and logged with the
reason.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import relax

from banana.compiler.passes.attention_match import Graph, Match, NoMatch, candidates, match_site
from banana.kernels.attention import AttentionKnobs, AttentionSpec, attention_primfunc, default_knobs

logger = logging.getLogger(__name__)

_DTYPE_BYTES = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class AttentionSite:
    """One fused site, as recorded in the manifest (``build.attention.sites``)."""

    name: str
    kernel: str
    pattern: str
    kv_repeat: str
    head_map: str
    batch: int
    q_heads: int
    kv_heads: int
    group: int
    q_len: int
    kv_len: int
    head_dim: int
    scale: float
    mask: list[int] | None
    causal: bool
    dtype: str
    kv_bytes_unfused: int
    kv_bytes_fused: int
    score_bytes_unfused: int
    knobs: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SkippedSite:
    """A ``matmul(softmax(...), V)`` left unfused, with the reason."""

    name: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AttentionFusion:
    """Result of :func:`fuse_attention`: the rewritten module and the per-site records."""

    mod: tvm.IRModule
    sites: list[AttentionSite] = field(default_factory=list)
    skipped: list[SkippedSite] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "fused": len(self.sites),
            "unfused": len(self.skipped),
            "sites": [s.to_json() for s in self.sites],
            "skipped": [s.to_json() for s in self.skipped],
        }


def traffic_bytes(spec: AttentionSpec, repeated: bool) -> tuple[int, int, int]:
    """(K/V bytes unfused, K/V bytes fused, score bytes unfused), each operand streamed once.

    Unfused: a repeat reads the Hkv heads and writes Hq heads, which both matmuls read back;
    the scores (Lq x Lkv per q head) are written and read by matmul, scale, mask, softmax and
    the second matmul (5 writes + 5 reads, 4 when unmasked). Fused: each K/V head once per group.
    """
    elem = _DTYPE_BYTES[spec.dtype]
    kv_base = 2 * spec.batch * spec.kv_heads * spec.kv_len * spec.head_dim * elem
    kv_full = 2 * spec.batch * spec.q_heads * spec.kv_len * spec.head_dim * elem
    unfused = kv_base + 2 * kv_full if repeated else kv_full
    passes = 10 if spec.mask_shape is not None else 8
    scores = passes * spec.batch * spec.q_heads * spec.q_len * spec.kv_len * elem
    return unfused, kv_base, scores


KernelFactory = Callable[[AttentionSpec, int], tuple[tvm.tirx.PrimFunc, dict[str, int]]]


def cpu_kernel(spec: AttentionSpec, num_cores: int, knobs: AttentionKnobs | None = None) -> tuple[Any, dict[str, int]]:
    """LLVM CPU kernel (host x86, arm64 NEON) with default or given knobs."""
    chosen = knobs or default_knobs(spec, num_cores)
    return attention_primfunc(spec, chosen), chosen.to_json()


def hexagon_kernel(spec: AttentionSpec, num_cores: int) -> tuple[Any, dict[str, int]]:
    """The LLVM kernel for Hexagon: one thread (no TVM CPU thread pool) and the row-at-a-time variant
    whose wide vector loops LLVM maps onto 128-byte HVX registers (the 8-lane register-tiled CPU
    variant would use a sixteenth of each)."""
    base = default_knobs(spec, 1)
    chosen = AttentionKnobs(tile_q=base.tile_q, tile_kv=base.tile_kv, parallel=False)
    return attention_primfunc(spec, chosen, wide_vectors=True), chosen.to_json()


def gpu_kernel(spec: AttentionSpec, num_cores: int) -> tuple[Any, dict[str, int]]:
    """OpenCL (Adreno) kernel: work-groups sharing K/V tiles in local memory."""
    from banana.kernels.attention_gpu import attention_primfunc_gpu, default_gpu_knobs

    chosen = default_gpu_knobs(spec)
    return attention_primfunc_gpu(spec, chosen), chosen.to_json()


def _emit_site(builder: relax.BlockBuilder, match: Match, remap: Any, name: str, num_cores: int,
               kernel: KernelFactory,
               kernels: dict[AttentionSpec, tuple[Any, dict[str, int]]]) -> tuple[relax.Expr, AttentionSite]:
    """Emit the prologue (layout fixes) and the call_tir; returns (value for match.out, record)."""
    q = remap(match.q)
    k = remap(match.k.base)
    v = remap(match.v.base)
    if match.k.needs_permute is not None:
        k = builder.emit(relax.op.permute_dims(k, list(match.k.needs_permute)))
    q_shape = list(match.q_shape)
    kv_shape = list(match.kv_shape)
    if match.rank == 3:
        q = builder.emit(relax.op.reshape(q, [1, *q_shape]))
        k = builder.emit(relax.op.reshape(k, [1, *kv_shape]))
        v = builder.emit(relax.op.reshape(v, [1, *kv_shape]))
        q_shape, kv_shape = [1, *q_shape], [1, *kv_shape]
    batch, q_heads, q_len, head_dim = q_shape
    kv_heads, kv_len = kv_shape[1], kv_shape[2]
    mask_shape = None
    if match.mask is not None:
        mask = remap(match.mask)
        m_shape = [int(d) for d in mask.ty.shape.values]
        m_shape = [1] * (4 - len(m_shape)) + m_shape
        mask = builder.emit(relax.op.reshape(mask, m_shape))  # size-1 axes broadcast in the kernel
        if match.mask_scale != 1.0:
            mask = builder.emit(relax.op.multiply(mask, relax.const(match.mask_scale, match.dtype)))
        mask_shape = tuple(m_shape)
    else:
        mask = relax.const(np.zeros((1, 1, 1, 1), dtype=match.dtype))
    spec = AttentionSpec(
        batch=batch, q_heads=q_heads, kv_heads=kv_heads, q_len=q_len, kv_len=kv_len, head_dim=head_dim,
        scale=match.scale, head_map=match.k.head_map, causal=match.causal, mask_shape=mask_shape, dtype=match.dtype,
    )
    if spec not in kernels:  # sites with the same shapes share one kernel: less code, one LLVM build
        func, chosen = kernel(spec, num_cores)
        symbol = f"banana_attention_{name}"
        kernels[spec] = (builder.add_func(func.with_attr("global_symbol", symbol), symbol), chosen)
    gvar, chosen = kernels[spec]
    out_ty = relax.TensorType([batch, q_heads, q_len, head_dim], match.dtype)
    value: relax.Expr = relax.call_tir(gvar, [q, k, v, mask], out_ty)
    if match.rank == 3:
        value = builder.emit(value)
        value = relax.op.reshape(value, list(match.q_shape))
    repeated = match.k.group > 1
    unfused, fused, scores = traffic_bytes(spec, repeated)
    pattern = "matmul" + "".join(f"-{s}" for s in match.steps) + "-softmax-matmul"
    if match.rank == 3:
        pattern = "3d:" + pattern
    site = AttentionSite(
        name=name, kernel=gvar.name_hint, pattern=pattern, kv_repeat=match.k.pattern, head_map=match.k.head_map,
        batch=batch, q_heads=q_heads, kv_heads=kv_heads, group=spec.group, q_len=q_len, kv_len=kv_len,
        head_dim=head_dim, scale=float(match.scale), mask=list(mask_shape) if mask_shape else None, causal=match.causal,
        dtype=match.dtype, kv_bytes_unfused=unfused, kv_bytes_fused=fused, score_bytes_unfused=scores,
        knobs=chosen,
    )
    return value, site


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, matches: dict[relax.Var, Match], num_cores: int,
                 kernel: KernelFactory) -> None:
        super().__init__(mod)
        self.matches = matches
        self.num_cores = num_cores
        self.kernel = kernel
        self.sites: list[AttentionSite] = []
        self.kernels: dict[AttentionSpec, tuple[Any, dict[str, int]]] = {}

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        match = self.matches.get(binding.var)
        if match is None:
            super().visit_var_binding_(binding)
            return
        name = f"{len(self.sites)}_{binding.var.name}"
        value, site = _emit_site(self.builder_, match, self.visit_expr, name, self.num_cores, self.kernel,
                                 self.kernels)
        self.sites.append(site)
        value = self.builder_.normalize(value)
        if isinstance(binding.var, relax.DataflowVar):
            new_var = self.builder_.emit(value, binding.var.name)
        else:
            new_var = self.builder_.emit_output(value, binding.var.name)
        self.set_var_remap(binding.var, new_var)


def fuse_attention(mod: tvm.IRModule, *, num_cores: int = 1, knobs: AttentionKnobs | None = None,
                   kernel: KernelFactory | None = None, params: dict[str, np.ndarray] | None = None,
                   func_name: str = "main") -> AttentionFusion:
    """Rewrite every fusable attention site in ``mod[func_name]``; unfusable ones are logged.

    ``kernel`` makes the PrimFunc for a site (default: the LLVM CPU kernel, with ``knobs`` if
    given, else :func:`banana.kernels.attention.default_knobs`). ``params`` (weight name -> value)
    lets constant masks stored as weights be recognised (a causal mask becomes the kernel's flag).
    """
    if kernel is None:
        kernel = functools.partial(cpu_kernel, knobs=knobs)
    func = mod[func_name]
    graph = Graph(func, params)
    matches: dict[relax.Var, Match] = {}
    skipped: list[SkippedSite] = []
    for var, call in candidates(graph):
        try:
            matches[var] = match_site(graph, var, call)
        except NoMatch as reason:
            skipped.append(SkippedSite(var.name, str(reason)))
            logger.warning("attention site '%s' left unfused: %s", var.name, reason)
    if not matches:
        return AttentionFusion(mod=mod, skipped=skipped)
    rewriter = _Rewriter(mod, matches, num_cores, kernel)
    new_func = rewriter.visit_expr(func)
    rewriter.builder_.update_func(mod.get_global_var(func_name), new_func)
    new_mod = rewriter.builder_.get()
    new_mod = relax.transform.DeadCodeElimination([func_name])(new_mod)
    for site in rewriter.sites:
        logger.info(
            "fused attention %s: %s, %d q / %d kv heads, Lq %d, Lkv %d, D %d (K/V bytes %d -> %d)",
            site.name, site.pattern, site.q_heads, site.kv_heads, site.q_len, site.kv_len, site.head_dim,
            site.kv_bytes_unfused, site.kv_bytes_fused,
        )
    return AttentionFusion(mod=new_mod, sites=rewriter.sites, skipped=skipped)
