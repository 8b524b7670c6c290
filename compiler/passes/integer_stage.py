"""The pipeline's two integer steps: cut quantized layers out before import, lower them after fusion.

Which backends run integer kernels is data (:data:`INTEGER_BACKENDS`): a backend missing here
gets an error naming the first quantized layer, or -- with ``allow_float_fallback`` -- the
unchanged QDQ graph (TVM's float legalisation) with every layer listed as a fallback. A backend
whose layers need their own lowering names it in :data:`LOWERINGS` (the Adreno GPU runs every
quantized layer weight-only: :mod:`.integer_adreno`); the others use :func:`lower_integer_regions`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from banana.compiler.frontend.importer import ImportedModel, import_onnx
from banana.compiler.passes.integer import IntegerLowering, LayerRecord, lower_integer_regions
from banana.compiler.passes.integer_match import IntegerMatch, Skipped, match_integer_regions

logger = logging.getLogger(__name__)

# Backend -> why it runs integer kernels (banana.kernels.int_gemm picks the schedule per target).
INTEGER_BACKENDS: dict[str, str] = {
    "host": "int_gemm generic/x86 schedule",
    "cpu": "int_gemm arm64 (sdot / smmla when the SoC has dotprod / i8mm)",
    "hexagon": "int_gemm_hexagon (HVX vrmpy)",
    "adreno": "wo_gemm_adreno (OpenCL weight-only GEMM, int8/int4 weights dequantised in registers; "
              "W8A8 layers keep their activation QDQ as float fake-quant)",
}

# Backend -> "module:function" with lower_integer_regions' signature plus ``variant``.
LOWERINGS: dict[str, str] = {
    "adreno": "banana.compiler.passes.integer_adreno:lower_adreno_regions",
}


@dataclass
class IntegerPlan:
    """What the import step decided: the regions to lower, or the layers left in float."""

    match: IntegerMatch | None
    fallbacks: list[Skipped] = field(default_factory=list)
    backend: str = ""
    variant: str | None = None  # the backend's kernel variant (adreno: integer_adreno.WO_VARIANTS)

    def to_json(self, lowering: IntegerLowering | None) -> dict[str, Any]:
        if lowering is not None:
            return lowering.to_json()
        layers = [LayerRecord(s.node, s.op, "float32", "float32", "tvm.float", "float-fallback", reason=s.reason)
                  for s in self.fallbacks]
        return {"layers": [r.to_json() for r in layers], "float_fallbacks": [s.node for s in self.fallbacks]}


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def import_with_integer_regions(path: Path, shapes: dict[str, tuple[int, ...]] | None, backend: str, *,
                                allow_float_fallback: bool = False,
                                variant: str | None = None) -> tuple[ImportedModel, IntegerPlan]:
    """Import ``path``; a QDQ model has its quantized layers replaced by placeholders first.

    The returned model still names the original file and digest (the manifest and ``banana
    verify`` refer to what the user compiled, not to the rewritten copy). ``variant``: the
    backend's kernel variant (adreno: ``fp32`` -- the default, verifiable on PoCL -- ``fp16`` or
    ``fp16-acc32``); None is the backend's default, recorded in each layer's kernel name.
    """
    from banana.compiler.errors import BadConfigError, UnsupportedOpError
    from banana.compiler.frontend.onnx_loading import load_onnx

    if variant is not None:
        if backend != "adreno":
            raise BadConfigError(f"kernel variant {variant!r}: only the adreno backend has variants")
        from banana.compiler.passes.integer_adreno import wo_variant

        wo_variant(variant)  # unknown names fail before the import

    model, digest = load_onnx(Path(path))
    if not is_qdq(model):
        return import_onnx(path, shapes), IntegerPlan(None)
    match = match_integer_regions(model, allow_float_fallback=allow_float_fallback)
    if not match.regions:
        return import_onnx(path, shapes), IntegerPlan(None, match.skipped)
    if backend not in INTEGER_BACKENDS:
        reason = f"backend '{backend}' has no integer GEMM kernel"
        if not allow_float_fallback:
            first = match.regions[0]
            raise UnsupportedOpError(
                f"quantized layer '{first.node}' ({first.op}) cannot run in integer arithmetic: {reason} "
                f"({len(match.regions)} such layers; --allow-float-fallback runs them in float)")
        skipped = match.skipped + [Skipped(r.node, r.op, reason) for r in match.regions]
        logger.warning("%d quantized layers fall back to float: %s", len(match.regions), reason)
        return import_onnx(path, shapes), IntegerPlan(None, skipped)
    stepped = next((r for r in match.regions if r.steps), None)
    if stepped is not None and backend in LOWERINGS:
        # adreno keeps W8A8 activations as float fake-quant ops with constant scales; the matcher has
        # already folded a gathered-scale pair into the region (integer_match._stepped_source)
        raise UnsupportedOpError(
            f"quantized layer '{stepped.node}' ({stepped.op}): per-step activation scales (gathered by input "
            f"'{stepped.step_input}') are not supported on backend '{backend}'; compile one model.step{{i}}.onnx "
            "per step instead")
    with tempfile.TemporaryDirectory(prefix="banana-int-") as tmp:
        rewritten = Path(tmp) / Path(path).name
        onnx.save_model(match.model, str(rewritten), save_as_external_data=match.model.ByteSize() > 1_500_000_000)
        imported = import_onnx(rewritten, shapes)
    imported.source_path, imported.sha256, imported.onnx_model = Path(path).resolve(), digest, model
    return imported, IntegerPlan(match, match.skipped, backend=backend, variant=variant)


def integer_stage(imported: ImportedModel, plan: IntegerPlan, target: dict[str, Any], *,
                  taps: bool = False) -> IntegerLowering | None:
    """Lower the plan's regions in ``imported`` (in place: module, weights); None for float models."""
    if plan.match is None or not plan.match.regions:
        return None
    if plan.backend in LOWERINGS:
        import importlib

        module, name = LOWERINGS[plan.backend].split(":")
        lower = getattr(importlib.import_module(module), name)
        lowering = lower(imported.mod, imported.weight_names, imported.weights, plan.match.regions, target,
                         skipped=plan.fallbacks, taps=taps, variant=plan.variant)
    else:
        lowering = lower_integer_regions(imported.mod, imported.weight_names, imported.weights, plan.match.regions,
                                         target, skipped=plan.fallbacks, taps=taps)
    imported.mod = lowering.mod
    imported.weight_names = lowering.weight_names
    imported.weights = lowering.weights
    return lowering


def precision_label(lowering: IntegerLowering | None) -> str:
    """The manifest's one-word precision: ``fp32``, the weight widths, or weight x activation pairs.

    - ``fp32``: no integer layer (float model, or every quantized layer a float fallback);
    - ``int8``, ``int4+int8``: the integer layers' weight widths, sorted, when every integer layer's
      activations are 8-bit (or float, weight-only) -- the common case keeps its short, stable label;
    - otherwise (some layer has 16-bit activations) every distinct pair as ``w<W>a<A>`` (the sweep's
      names: ``w8a8``, ``w8a16``; weight-only layers ``w<W>af32``), sorted by widths and joined by
      ``+``: ``w8a16``, ``w4a8+w8a16``, ``w4a16+w8a8+w8a16``. Signedness (uint16 vs int16) is in
      each layer's ``act`` in the ``integer`` section, not here.
    """
    if lowering is None:
        return "fp32"
    layers = [r for r in lowering.layers if r.weight != "float32"]
    if not layers:
        return "fp32"

    def bits(dtype: str) -> int:
        return int("".join(c for c in dtype if c.isdigit()))

    if all(r.act == "float32" or bits(r.act) == 8 for r in layers):
        return "+".join(sorted({r.weight for r in layers}))
    pairs = sorted({(bits(r.weight), r.act == "float32", bits(r.act)) for r in layers})
    return "+".join(f"w{w}a{'f' if fl else ''}{a}" for w, fl, a in pairs)
