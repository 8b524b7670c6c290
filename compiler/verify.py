"""Does the artifact compute what the original model computes?

The reference is always onnxruntime running the *original* model file (checked against the
sha256 recorded at compile time), never banana's own earlier output. Relative error is
max|out - ref| / max|ref| per output: elementwise ratios explode near zero and say nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from banana.compiler.artifact import Artifact
from banana.compiler.errors import ArtifactError, BadConfigError, VerificationError
from banana.compiler.frontend.importer import TensorSpec
from banana.compiler.frontend.onnx_loading import sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs: float
    max_rel: float
    ok: bool


@dataclass
class VerifyReport:
    backend: str
    executor: str
    rtol: float
    executed: bool
    comparisons: list[OutputComparison] = field(default_factory=list)
    run_s: float = 0.0
    note: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def raise_on_failure(self) -> None:
        bad = [c for c in self.comparisons if not c.ok]
        if bad:
            worst = max(bad, key=lambda c: c.max_rel)
            raise VerificationError(
                f"output '{worst.name}' differs from onnxruntime: max rel error {worst.max_rel:.3g} "
                f"> {self.rtol:g} (max abs {worst.max_abs:.3g}) on backend {self.backend}"
            )


#: the multi-step QDQ export's step input (:data:`banana.compiler.quantize.qdq.STEP_INPUT`; not imported:
#: that module imports torch)
STEP_INPUT = "step"


def random_inputs(specs: Sequence[TensorSpec], seed: int, *, steps: int | None = None) -> list[np.ndarray]:
    """Seeded inputs for ``specs``; an integer scalar named ``step`` (banana's multi-step QDQ export,
    :data:`banana.compiler.quantize.qdq.STEP_INPUT`) indexes per-step scale tables, so it gets a
    valid step: one in ``[0, steps)`` when the step count is known, else 0 (valid for every model)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        if spec.name == STEP_INPUT and spec.shape == () and np.issubdtype(dtype, np.integer):
            arrays.append(np.array(rng.integers(0, steps) if steps else 0, dtype))
        elif np.issubdtype(dtype, np.floating):
            arrays.append(rng.standard_normal(spec.shape).astype(dtype))
        elif dtype == np.bool_:
            arrays.append(rng.integers(0, 2, spec.shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 8, spec.shape).astype(dtype))
    return arrays


def load_inputs(path: Path, specs: Sequence[TensorSpec]) -> list[np.ndarray]:
    """Inputs from an .npz keyed by input name; every name, shape and dtype must match."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise BadConfigError(f"{path}: cannot read inputs as .npz ({exc})") from None
    result = []
    for spec in specs:
        if spec.name not in arrays:
            raise BadConfigError(f"{path}: missing input '{spec.name}' (has: {', '.join(arrays) or 'none'})")
        array = arrays[spec.name]
        if tuple(array.shape) != spec.shape:
            raise BadConfigError(f"{path}: input '{spec.name}' has shape {array.shape}, expected {spec.shape}")
        if str(array.dtype) != spec.dtype:
            raise BadConfigError(f"{path}: input '{spec.name}' has dtype {array.dtype}, expected {spec.dtype}")
        result.append(array)
    return result


def onnxruntime_outputs(
    model_path: Path, specs: Sequence[TensorSpec], inputs: Sequence[np.ndarray]
) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Graph optimisations swap QDQ pairs for onnxruntime's x86 integer kernels, which overflow on
    # u8 x s8 products: the reference must be the model's ONNX semantics, not a fast approximation.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, {spec.name: array for spec, array in zip(specs, inputs, strict=True)}))


def compare(name: str, out: np.ndarray, ref: np.ndarray, rtol: float) -> OutputComparison:
    if out.shape != ref.shape:
        return OutputComparison(name, float("inf"), float("inf"), False)
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    finite = bool(np.all(np.isfinite(out)))
    return OutputComparison(name, max_abs, max_rel, finite and max_rel <= rtol)


FLOAT_RTOL = 1e-4
# A quantized model may legitimately differ by a rounding-tie flip: onnxruntime sums dequantized
# MatMuls in float32 and can land an activation on the other side of a tie that banana's exact int32
# accumulation rounds right (checked in float64; integer_verify.onnxruntime_divergence names the
# layer); the flipped code then propagates (nano DiT W8A8: up to 1.6 output steps on 3 of 30 inputs).
# 1e-2 of the output range is about 2.5 steps of an 8-bit output range.
QDQ_RTOL = 1e-2


def default_rtol(model_path: Path) -> float:
    import onnx

    model = onnx.load_model(str(model_path), load_external_data=False)
    quantized = any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)
    return QDQ_RTOL if quantized else FLOAT_RTOL


def reference_model_path(artifact: Artifact, override: Path | None) -> Path:
    path = Path(override) if override else Path(artifact.manifest["model"]["path"])
    if not path.is_file():
        raise ArtifactError(f"reference model {path} not found; pass --model PATH to the original model")
    digest = sha256_file(path)
    if digest != artifact.manifest["model"]["sha256"]:
        raise ArtifactError(
            f"{path}: sha256 {digest[:12]}… is not the model this artifact was compiled from "
            f"({artifact.manifest['model']['sha256'][:12]}…)"
        )
    return path


def verify_artifact(
    artifact: Artifact,
    *,
    inputs: Sequence[np.ndarray] | None = None,
    seed: int = 0,
    rtol: float | None = None,
    model_path: Path | None = None,
) -> VerifyReport:
    """``rtol=None``: 1e-4 for float models, :data:`QDQ_RTOL` for QDQ models."""
    from banana.targets.backends import get_backend

    executor = artifact.manifest["run"]["executor"]
    if executor == "none":
        report = VerifyReport(artifact.backend, executor, rtol or FLOAT_RTOL, executed=False)
        report.note = "this backend's code cannot execute on this machine: checksums verified only"
        return report
    reference_path = reference_model_path(artifact, model_path)
    report = VerifyReport(artifact.backend, executor, rtol if rtol is not None else default_rtol(reference_path),
                          executed=True)
    specs = artifact.inputs
    steps = int(artifact.manifest.get("integer", {}).get("steps", 0))
    if inputs is not None:
        runs = [("", list(inputs))]
    else:  # a multi-step model runs once per step (same inputs): each step has its own scale tables
        runs = step_runs(specs, random_inputs(specs, seed), steps)
    one_step = rtol is None and integer_kernels_only(artifact.manifest)
    tolerances = []
    cascades: list[str] = []  # integer outputs accepted beyond one step (see QDQ_RTOL)
    backend = get_backend(artifact.backend)
    with_taps = bool(artifact.manifest.get("integer", {}).get("taps"))  # integer_taps build: taps follow the outputs
    for suffix, arrays in runs:
        reference = onnxruntime_outputs(reference_path, specs, arrays)
        start = time.perf_counter()
        outputs = backend.run(artifact, arrays)
        report.run_s += time.perf_counter() - start
        if with_taps:
            outputs = outputs[:len(reference)]
        if len(outputs) != len(reference):
            raise VerificationError(
                f"artifact returned {len(outputs)} output(s), onnxruntime {len(reference)}"
            )
        for spec, out, ref in zip(artifact.outputs, outputs, reference, strict=True):
            tolerances.append(one_step_rtol(ref) if one_step else report.rtol)
            comparison = compare(spec.name + suffix, out, ref, tolerances[-1])
            if one_step and not comparison.ok:
                within_cascade = compare(comparison.name, out, ref, QDQ_RTOL)
                if within_cascade.ok:
                    cascades.append(f"{comparison.name} {quantisation_steps(out, ref):.2f}")
                    comparison = within_cascade
            report.comparisons.append(comparison)
    if one_step and tolerances:
        report.rtol = max(tolerances)
        report.note = "integer kernels: tolerance is one 8-bit quantisation step of each output's range"
        if cascades:
            report.rtol = max(report.rtol, QDQ_RTOL)
            report.note += (f"; beyond one step but within the rounding-tie cascade bound ({QDQ_RTOL:g} of max|ref|,"
                            f" see QDQ_RTOL): {', '.join(cascades)} steps")
    return report


def quantisation_steps(out: np.ndarray, ref: np.ndarray) -> float:
    """Largest difference in 8-bit steps of ``ref``'s range."""
    step = float(ref.max() - ref.min()) / 255 if ref.size else 0.0
    diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
    return diff / step if step > 0 else diff


def step_runs(specs: Sequence[TensorSpec], arrays: list[np.ndarray], steps: int) -> list[tuple[str, list[np.ndarray]]]:
    """``(name suffix, inputs)`` per run: one run as drawn, or with ``steps`` and a ``step`` input, the same
    inputs once per step (suffix ``@step{i}``): a wrong row of any step's scale tables shows up."""
    index = next((i for i, s in enumerate(specs) if s.name == STEP_INPUT and s.shape == ()), None)
    if not steps or index is None:
        return [("", arrays)]
    runs = []
    for step in range(steps):
        step_arrays = list(arrays)
        step_arrays[index] = np.array(step, dtype=arrays[index].dtype)
        runs.append((f"@step{step}", step_arrays))
    return runs


def integer_kernels_only(manifest: dict) -> bool:
    """Every quantized layer runs integer kernels (no float fallback): outputs match to one step."""
    integer = manifest.get("integer")
    return bool(integer and integer["layers"] and not integer["float_fallbacks"])


def one_step_rtol(ref: np.ndarray) -> float:
    """One 8-bit step of ``ref``'s range, relative to max|ref| (the measure :func:`compare` uses)."""
    if not ref.size:
        return FLOAT_RTOL
    scale = float(np.abs(ref).max())
    step = float(ref.max() - ref.min()) / 255
    return max(step / scale, FLOAT_RTOL) if scale > 0 else FLOAT_RTOL
