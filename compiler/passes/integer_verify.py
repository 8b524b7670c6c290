"""Bit-exact check of a compiled artifact's integer tensors against banana's integer reference.

An ``integer_taps`` build returns, after the model outputs, every quantized layer's integer
tensors (see :class:`banana.compiler.passes.integer.TapSpec`). Each is recomputed here with
:mod:`banana.compiler.quantize.integer_reference` from the *original* ONNX file's integer
weights and scales (re-matched, not read back from the artifact) and from the previous tap of
the same layer, so every step -- quantize, im2col, int32 accumulation, requantization -- is
checked on its own, bit for bit. The ``a`` tap is what the GEMM kernel reads: uint16 codes
re-biased to int16 (``q - 32768``, :func:`~banana.compiler.quantize.integer_reference.gemm_operand`),
whose zero point ``zp - 32768`` the requantization's per-channel correction then carries.
A model with per-step scales is checked with the scales of the step the taps were run with
(``check_taps(..., step=s)``; :func:`onnxruntime_divergence` reads it from the feeds).

:func:`onnxruntime_divergence` answers the other question -- *where* a compiled model's output
first departs from onnxruntime's: it compares every layer's quantized activation with the codes
onnxruntime's ``QuantizeLinear`` produced and, at the first differing code, both float values in
quantization steps. Both runtimes' float ops (LayerNorm, GELU, onnxruntime's float32 sum over the
dequantized MatMul) are off the exact value by a few ulps, so now and then one value lands on the
other side of a ``.5`` tie (measured on the nano DiT: ``x/s`` 10.499986 here, 10.500003 in
onnxruntime, 10.4999868 exact) and the flipped code cascades through the later layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from banana.compiler.passes.integer_match import Region, match_integer_regions
from banana.compiler.quantize import integer_reference as ref

if TYPE_CHECKING:
    import onnx


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
    if kind == "a":  # the kernel's operand: uint16 codes arrive re-biased to int16 (ref.gemm_operand)
        q = taps["q"]
        if region.conv is not None:
            c = region.conv
            q = ref.im2col(q, c["kernel"], c["strides"], c["pads"], zp)
        return ref.gemm_operand(q.reshape(-1, region.k), dtype)
    if kind == "acc":
        return ref.accumulate(taps["a"], region.w, region.k_group)
    if kind == "out":  # the correction pairs with the operand's zero point, so acc + cb is sum (q - zp) * w + bias
        so, zo, odtype = region.requant
        scale = ref.combined_scale(sa, region.sw)
        cb = ref.zero_point_correction(region.w, ref.gemm_zero_point(zp, dtype)).astype(np.int64)
        if region.bias is not None:
            cb = cb + ref.bias_to_int32(region.bias, scale)
        mult = ref.requant_multiplier(sa, region.sw, so)
        out = ref.requant(taps["acc"], cb.astype(np.int32), mult, zo, odtype)
        return out
    return None


def check_taps(tap_values: list[np.ndarray], tap_specs: list[dict[str, Any]], regions: list[Region],
               step: int | None = None) -> list[TapCheck]:
    """Compare each integer tap with the reference computed from the layer's earlier taps.

    ``step``: the value of the model's ``step`` input in the run that produced the taps; regions
    with per-step scales (multi-step QDQ export) are checked with that step's scales
    (:meth:`Region.at_step`), exactly as the ``model.step{i}`` graph would be.
    """
    if len(tap_values) != len(tap_specs):
        raise ValueError(f"{len(tap_values)} tap tensors for {len(tap_specs)} tap specs")
    if any(r.steps for r in regions):
        if step is None:
            raise ValueError("the model has per-step scales: check_taps needs the run's step")
        regions = [r.at_step(step) if r.steps else r for r in regions]
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


@dataclass(frozen=True)
class Divergence:
    """One layer's quantized activation against onnxruntime's: how many codes differ, and the first.

    ``ours``/``theirs``: the float input at the first differing code, in quantization steps
    (``x / scale``), when both are known (a layer fed by another layer's requantized output has
    no float input of its own in the compiled model).
    """

    index: int
    layer: str
    elements: int
    mismatches: int
    first: tuple[int, ...] | None = None
    ours: float | None = None
    theirs: float | None = None


def _activation_names(model: onnx.ModelProto, region: Region) -> tuple[str, str | None] | None:
    """``(quantized tensor, float tensor it quantizes)`` feeding ``region`` in the original graph."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = next((n for n in model.graph.node if n.name == region.node or region.node in n.output), None)
    dq = producer.get(node.input[0]) if node is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    q = producer.get(dq.input[0])
    return dq.input[0], (q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None)


def onnxruntime_divergence(model_path: Path, feeds: dict[str, np.ndarray], tap_values: list[np.ndarray],
                           tap_specs: list[dict[str, Any]]) -> list[Divergence]:
    """Each tapped layer's quantized activation (``q``) against onnxruntime running the QDQ file.

    onnxruntime runs with graph optimisations off (the model's ONNX semantics, as
    :func:`banana.compiler.verify.onnxruntime_outputs`), every layer's activation tensors added as
    graph outputs. A debugging aid: the first entry with mismatches is where two runs part.
    """
    import onnx
    import onnxruntime as ort

    from banana.compiler.frontend.onnx_loading import load_onnx

    model, _ = load_onnx(Path(model_path))
    regions = match_integer_regions(model, allow_float_fallback=True).regions
    step = feeds.get(next((r.step_input for r in regions if r.step_input), ""))
    regions = [r.at_step(int(np.asarray(step))) if r.steps and step is not None else r for r in regions]
    taps: dict[int, dict[str, np.ndarray]] = {}
    for spec, value in zip(tap_specs, tap_values, strict=True):
        taps.setdefault(int(spec["layer"]), {})[spec["kind"]] = np.asarray(value)
    names = {r.index: _activation_names(model, r) for r in regions if "q" in taps.get(r.index, {})}
    wanted = sorted({n for pair in names.values() if pair for n in pair if n})
    graph_outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in wanted if n not in graph_outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    out = []
    for index, pair in sorted(names.items()):
        if pair is None:
            continue
        region, q = regions[index], taps[index]["q"]
        theirs_q = values[pair[0]]
        if q.shape != theirs_q.shape:
            out.append(Divergence(index, region.node, int(q.size), int(q.size)))
            continue
        differ = np.argwhere(q != theirs_q)
        if not len(differ):
            out.append(Divergence(index, region.node, int(q.size), 0))
            continue
        first = tuple(int(i) for i in differ[0])
        scale = np.float32(region.act[0])
        x = taps[index].get("x")
        ours = float(np.float32(x[first]) / scale) if x is not None else None
        theirs = float(np.float32(values[pair[1]][first]) / scale) if pair[1] else None
        out.append(Divergence(index, region.node, int(q.size), len(differ), first, ours, theirs))
    return out
