"""Schedule knobs of banana's fp32 GEMM kernel (:mod:`banana.kernels.f32_gemm`) for ``banana tune``.

The kernel's outer-product variant (every GEMM with ``>= PACK_MIN_ROWS`` rows or a ``[k, n]`` weight:
all the large ones) has three knobs: the register tile's ``rows`` and ``vecs`` (L-lane vectors per
row) and the ``k_block`` of its packed B panel. Its defaults are hand-picked for the register file
and an L1-sized panel; which tile is fastest per shape depends on the core (port count, L1/L2 sizes,
how the panel and C lines share the caches), so it is measured. The search space per distinct
shape is small and register-limited (:func:`banana.kernels.f32_gemm.outer_tile_fits`: x86 AVX2 16
ymm, arm64 32 q): rows x vecs from :data:`banana.kernels.f32_gemm.KNOB_ROWS` / ``KNOB_VECS``, each
with its tile's default k block, about half and twice it; the default first, then nearest the
default (log2 distance), at most :data:`MAX_GEMM_CANDIDATES`. The dot (GEMV-like, few rows, ``[n, k]``
weight) variant is not searched: it is memory bound and microseconds long.

The search, its checks and its store are the attention kernel's (:mod:`banana.tuning.knobs`): kind
``f32_gemm``, spec ``{m, n, k, transpose_b, bias}``. ``banana compile --tuning-db`` applies the best
knobs in the GEMM pass (:func:`banana.tuning.apply.active_gemm_knobs`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm

from banana.kernels.f32_gemm import (
    KNOB_ROWS,
    KNOB_VECS,
    F32Tile,
    default_k_block,
    default_tile,
    f32_gemm_primfunc,
    is_dot,
    k_block_options,
    outer_tile_fits,
    target_traits,
)
from banana.tuning.knobs import KnobKernel, as_deployed, canonical, load_best_knobs

KIND = "f32_gemm"
MAX_GEMM_CANDIDATES = 12


@dataclass(frozen=True)
class GemmSpec:
    """One GEMM kernel as the GEMM pass emits it (the store's identity, with the SoC/backend)."""

    m: int
    n: int
    k: int
    transpose_b: bool
    bias: bool

    def to_json(self) -> dict[str, Any]:
        return {"m": self.m, "n": self.n, "k": self.k, "transpose_b": self.transpose_b, "bias": self.bias}

    @property
    def kernel_name(self) -> str:
        """The PrimFunc name the GEMM pass gives the kernel."""
        return f"f32_gemm_{self.m}x{self.n}x{self.k}{'_t' if self.transpose_b else ''}{'_bias' if self.bias else ''}"

    @property
    def tunable(self) -> bool:
        """Only the outer-product kernel has knobs searched (see the module docstring)."""
        return not is_dot(self.m, self.transpose_b)


@dataclass(frozen=True)
class GemmKnobs:
    """Outer-product register tile (``rows`` x ``vecs`` L-lane vectors) and k block."""

    rows: int
    vecs: int
    k_block: int

    def to_json(self) -> dict[str, int]:
        return {"rows": self.rows, "vecs": self.vecs, "k_block": self.k_block}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GemmKnobs:
        return cls(int(data["rows"]), int(data["vecs"]), int(data["k_block"]))

    @property
    def tile(self) -> F32Tile:
        return F32Tile(self.rows, self.vecs)


def gemm_key(spec: GemmSpec) -> str:
    """Canonical spec JSON: the key of :func:`load_tuned_gemm_knobs`."""
    return canonical(spec.to_json())


def default_gemm_knobs(spec: GemmSpec, target: tvm.target.Target | dict[str, Any]) -> GemmKnobs:
    """The knobs ``f32_gemm_primfunc`` picks by itself for ``spec`` on ``target``."""
    lanes, arm = target_traits(target)
    tile = default_tile(spec.m, spec.n, lanes, False, arm)
    return GemmKnobs(tile.rows, tile.cols, default_k_block(spec.k, tile.cols * lanes))


def gemm_candidates(spec: GemmSpec, target: tvm.target.Target | dict[str, Any], count: int) -> list[GemmKnobs]:
    """The default knobs, then the register-limited grid nearest the default (log2 distance)."""
    lanes, arm = target_traits(target)
    base = default_gemm_knobs(spec, target)
    col_vecs = -(-spec.n // lanes)
    grid: list[GemmKnobs] = []
    for rows in KNOB_ROWS["arm" if arm else "x86"]:
        for vecs in KNOB_VECS:
            r, v = min(rows, spec.m), min(vecs, col_vecs)
            if not outer_tile_fits(r, v, arm):
                continue
            for kb in k_block_options(spec.k, v * lanes):
                knobs = GemmKnobs(r, v, kb)
                if knobs != base and knobs not in grid:
                    grid.append(knobs)

    def distance(k: GemmKnobs) -> tuple[float, int, int, int]:
        return (abs(math.log2(k.rows / base.rows)) + abs(math.log2(k.vecs / base.vecs))
                + abs(math.log2(k.k_block / base.k_block)), -k.rows * k.vecs, k.rows, k.k_block)

    ordered = [base] + sorted(grid, key=distance)
    return ordered[:max(1, min(count, MAX_GEMM_CANDIDATES))]


def gemm_module(spec: GemmSpec, target: tvm.target.Target | dict[str, Any], knobs: GemmKnobs) -> tvm.IRModule:
    """The kernel built with ``knobs`` (explicitly, also for the defaults) as ``main`` of a module."""
    func = f32_gemm_primfunc(spec.m, spec.n, spec.k, target=target, transpose_b=spec.transpose_b, bias=spec.bias,
                             tile=knobs.tile, k_block=knobs.k_block)
    return as_deployed(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))


def gemm_specs(mod: tvm.IRModule, target: dict[str, Any]) -> list[GemmSpec]:
    """The distinct GEMM kernels the LLVM lowering would emit for ``mod`` (after its fuse stage), in order:
    library dispatch then the GEMM pass, as in ``compiler.lowering.llvm_pre_schedule_passes``."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    from banana.compiler.passes.gemm import rewrite_f32_gemms

    tvm_target = tvm.target.Target(target)
    shapes: list[tuple[int, int, int, bool, bool]] = []
    with tvm_target:
        dispatched = tvm.transform.Sequential(cpu_generic.library_dispatch_passes(tvm_target))(mod)
        rewrite_f32_gemms(dispatched, tvm_target, shapes=shapes)
    return [GemmSpec(*shape) for shape in shapes]


def gemm_kernels(specs: list[GemmSpec], target: dict[str, Any]) -> list[KnobKernel]:
    """The knob search of each tunable GEMM spec (dot-kernel GEMMs are left out)."""
    return [KnobKernel(KIND, spec.to_json(), default_gemm_knobs(spec, target),
                       functools.partial(gemm_candidates, spec, target),
                       functools.partial(gemm_module, spec, target))
            for spec in specs if spec.tunable]


def load_tuned_gemm_knobs(root: Path | str | None, soc_id: str, backend: str) -> dict[str, GemmKnobs]:
    """:func:`gemm_key` -> best verified knobs stored by ``banana tune`` ({} without a database or store).

    Only kernels whose best is not their default: where the default won, the build keeps the default
    path (the same kernel) and lists it untuned, so "tuned" always means a schedule the default build lacks."""
    found = load_best_knobs(root, soc_id, backend, KIND, changed_only=True)
    return {key: GemmKnobs.from_json(k) for key, k in found.items()}
