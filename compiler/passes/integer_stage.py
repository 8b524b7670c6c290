"""The pipeline's two integer steps: cut quantized layers out before import, lower them after fusion.

Which backends run integer kernels is data (:data:`INTEGER_BACKENDS`): a backend missing here
gets an error naming the first quantized layer, or -- with ``allow_float_fallback`` -- the
unchanged QDQ graph (TVM's float legalisation) with every layer listed as a fallback.
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
}


@dataclass
class IntegerPlan:
    """What the import step decided: the regions to lower, or the layers left in float."""

    match: IntegerMatch | None
    fallbacks: list[Skipped] = field(default_factory=list)

    def to_json(self, lowering: IntegerLowering | None) -> dict[str, Any]:
        if lowering is not None:
            return lowering.to_json()
        layers = [LayerRecord(s.node, s.op, "float32", "float32", "tvm.float", "float-fallback", reason=s.reason)
                  for s in self.fallbacks]
        return {"layers": [r.to_json() for r in layers], "float_fallbacks": [s.node for s in self.fallbacks]}


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def import_with_integer_regions(path: Path, shapes: dict[str, tuple[int, ...]] | None, backend: str, *,
                                allow_float_fallback: bool = False) -> tuple[ImportedModel, IntegerPlan]:
    """Import ``path``; a QDQ model has its quantized layers replaced by placeholders first.

    The returned model still names the original file and digest (the manifest and ``banana
    verify`` refer to what the user compiled, not to the rewritten copy).
    """
    from banana.compiler.errors import UnsupportedOpError
    from banana.compiler.frontend.onnx_loading import load_onnx

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
    with tempfile.TemporaryDirectory(prefix="banana-int-") as tmp:
        rewritten = Path(tmp) / Path(path).name
        onnx.save_model(match.model, str(rewritten), save_as_external_data=match.model.ByteSize() > 1_500_000_000)
        imported = import_onnx(rewritten, shapes)
    imported.source_path, imported.sha256, imported.onnx_model = Path(path).resolve(), digest, model
    return imported, IntegerPlan(match, match.skipped)


def integer_stage(imported: ImportedModel, plan: IntegerPlan, target: dict[str, Any], *,
                  taps: bool = False) -> IntegerLowering | None:
    """Lower the plan's regions in ``imported`` (in place: module, weights); None for float models."""
    if plan.match is None or not plan.match.regions:
        return None
    lowering = lower_integer_regions(imported.mod, imported.weight_names, imported.weights, plan.match.regions,
                                     target, skipped=plan.fallbacks, taps=taps)
    imported.mod = lowering.mod
    imported.weight_names = lowering.weight_names
    imported.weights = lowering.weights
    return lowering


def precision_label(lowering: IntegerLowering | None) -> str:
    """The manifest's one-word precision: fp32, int8, or e.g. int4+int8 for a mixed plan."""
    if lowering is None:
        return "fp32"
    kinds = sorted({r.weight for r in lowering.layers if r.weight != "float32"})
    return "+".join(kinds) if kinds else "fp32"
