"""Bit-exact check of a compiled artifact's integer tensors against banana's integer reference.

An ``integer_taps`` build returns, after the model outputs, every quantized layer's integer
tensors (see :class:`banana.compiler.passes.integer.TapSpec`). Each is recomputed here with
:mod:`banana.compiler.quantize.integer_reference` from the *original* ONNX file's integer
weights and scales (re-matched, not read back from the artifact) and from the previous tap of
the same layer, so every step -- quantize, im2col, int32 accumulation, requantization -- is
checked on its own, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from banana.compiler.passes.integer_match import Region, match_integer_regions
from banana.compiler.quantize import integer_reference as ref


@dataclass(frozen=True)
class TapCheck:
    layer: str
    kind: str
    elements: int
    mismatches: int

    @property
    def ok(self) -> bool:
        return self.mismatches == 0


def reference_regions(model_path: Path) -> list[Region]:
    from banana.compiler.frontend.onnx_loading import load_onnx

    model, _ = load_onnx(Path(model_path))
    return match_integer_regions(model, allow_float_fallback=True).regions


def _expected(region: Region, kind: str, taps: dict[str, np.ndarray]) -> np.ndarray | None:
    sa, zp, dtype = region.act
    if kind == "q" and "x" in taps:
        return ref.quantize(taps["x"], sa, zp, dtype)
    if kind == "a":
        q = taps["q"]
        if region.conv is not None:
            c = region.conv
            return ref.im2col(q, c["kernel"], c["strides"], c["pads"], zp)
        return q.reshape(-1, region.k)
    if kind == "acc":
        return ref.accumulate(taps["a"], region.w, region.k_group)
    if kind == "out":
        so, zo, odtype = region.requant
        scale = ref.combined_scale(sa, region.sw)
        cb = ref.zero_point_correction(region.w, zp).astype(np.int64)
        if region.bias is not None:
            cb = cb + ref.bias_to_int32(region.bias, scale)
        mult = ref.requant_multiplier(sa, region.sw, so)
        out = ref.requant(taps["acc"], cb.astype(np.int32), mult, zo, odtype)
        return out
    return None


def check_taps(tap_values: list[np.ndarray], tap_specs: list[dict[str, Any]], regions: list[Region]) -> list[TapCheck]:
    """Compare each integer tap with the reference computed from the layer's earlier taps."""
    if len(tap_values) != len(tap_specs):
        raise ValueError(f"{len(tap_values)} tap tensors for {len(tap_specs)} tap specs")
    by_region: dict[int, dict[str, np.ndarray]] = {}
    for spec, value in zip(tap_specs, tap_values, strict=True):
        by_region.setdefault(int(spec["layer"]), {})[spec["kind"]] = np.asarray(value)
    checks = []
    for index, taps in sorted(by_region.items()):
        region = regions[index]
        for kind in ("q", "a", "acc", "out"):
            if kind not in taps:
                continue
            want = _expected(region, kind, taps)
            if want is None:
                continue
            got = taps[kind]
            if got.shape != want.shape or got.dtype != want.dtype:
                mismatches = int(want.size) or 1
            else:
                mismatches = int(np.count_nonzero(got != want))
            checks.append(TapCheck(region.node, kind, int(want.size), mismatches))
    return checks
