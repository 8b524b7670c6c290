"""DQAT: timestep-aware quantization of few-step denoisers, exported as standard QDQ ONNX.

Stages (each a small module): :mod:`.calibrate` replays the real few-step trajectory and keeps
per-step activation statistics; :mod:`.ranges` turns them into PTQ ranges (min-max, percentile,
MSE); :mod:`.fakequant` is the torch simulation (weights per-channel/per-block, activations with
one scale per sampling step); :mod:`.dqat` fine-tunes it (LSQ step sizes, distillation);
:mod:`.fidelity` measures final decoded samples; :mod:`.mixed` searches per-layer plans;
:mod:`.qdq` exports QDQ ONNX; :mod:`.plan` writes the schema-checked plan.json; :mod:`.api`
ties them together for ``banana quantize``.
"""

from banana.compiler.quantize.calibrate import Calibration, calibrate
from banana.compiler.quantize.fakequant import LayerPrecision, QuantDenoiser, quantizable_layers
from banana.compiler.quantize.fidelity import FidelityResult, evaluate_fidelity, psnr, ssim

__all__ = [
    "Calibration",
    "FidelityResult",
    "LayerPrecision",
    "QuantDenoiser",
    "calibrate",
    "evaluate_fidelity",
    "psnr",
    "quantizable_layers",
    "ssim",
]
