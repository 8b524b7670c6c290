"""onnxruntime's own ``quantize_static`` on the same calibration data: the baseline DQAT must beat.

Same scope as banana's plan (only the weight-bearing MatMul/Gemm/Conv nodes, matched by weight
value), same bits (per-channel weights, UINT8 activations), same calibration inputs (every
step of the calibration trajectory); onnxruntime picks one static range per tensor (MinMax).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from banana.compiler.quantize.calibrate import Calibration
from banana.compiler.quantize.qdq import find_layer_nodes


class CalibrationReader:
    """onnxruntime's calibration reader over banana's calibration inputs (one sample per call)."""

    def __init__(self, cal: Calibration) -> None:
        self._items = [{k: v[j:j + 1] for k, v in step.items()}
                       for step in cal.inputs for j in range(len(step["timestep"]))]
        self._it = iter(self._items)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._items)


def ort_quantize_static(float_onnx: Path, out: Path, cal: Calibration, weights: dict[str, np.ndarray], *,
                        weight_bits: int = 8, per_channel: bool = True) -> Path:
    """Run ``onnxruntime.quantization.quantize_static`` (QDQ) on ``float_onnx``; returns ``out``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    nodes = find_layer_nodes(onnx.load(str(float_onnx)), weights)
    quantize_static(
        str(float_onnx), str(out), CalibrationReader(cal), quant_format=QuantFormat.QDQ, per_channel=per_channel,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8 if weight_bits == 8 else QuantType.QInt4,
        calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=sorted(n.name for n, _ in nodes.values()),
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return Path(out)
