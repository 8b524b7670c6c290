"""`banana compile` (host) accepts banana's QDQ output and onnxruntime quantize_static's QDQ model.

The compiled artifact runs here and is compared with onnxruntime executing the same QDQ file with
graph optimisations off (QDQ reference semantics: onnxruntime's optimised x86 integer kernels
saturate u8s8 products, which is why the pipeline's own rtol=1e-4 check against a default
session cannot be the reference for quantized models). Tolerance: one 8-bit step of the output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from banana.compiler.artifact import Artifact
from banana.compiler.pipeline import compile_model
from banana.compiler.quantize.fakequant import LayerPrecision, QuantDenoiser, quantizable_layers
from banana.compiler.quantize.ort_baseline import ort_quantize_static
from banana.compiler.quantize.qdq import export_qdq
from banana.compiler.quantize.ranges import activation_ranges
from banana.targets.backends import get_backend

KEYS = ("latent", "timestep", "text")


def _check_compiles(path: Path, out: Path, x: dict[str, np.ndarray]) -> float:
    compile_model(path, backend="host", out=out, verify=False)
    got = get_backend("host").run(Artifact.open(out), [x[k] for k in KEYS])[0]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, x)[0]
    err = float(np.abs(np.asarray(got) - ref).max())
    assert err <= (ref.max() - ref.min()) / 255, err
    return err


@pytest.mark.slow
def test_compile_accepts_banana_and_onnxruntime_qdq(nano, nano_cal, tmp_path: Path) -> None:
    layers = quantizable_layers(nano)
    plan = {n: LayerPrecision("int4" if i % 2 else "int8", "int8", 32 if i % 4 == 1 else 0)
            for i, n in enumerate(layers)}
    q = QuantDenoiser(nano, plan, activation_ranges(nano_cal, "mse"), nano_cal.timesteps)
    ours = export_qdq(q, tmp_path / "m.step1.onnx", step=1, int4_as_int8=True)
    weights = {n: nano.get_submodule(n).weight.detach().numpy() for n in layers}
    theirs = ort_quantize_static(tmp_path / "m.step1.float.onnx", tmp_path / "ort.onnx", nano_cal, weights)
    x = {k: nano_cal.inputs[1][k][:1] for k in KEYS}
    _check_compiles(ours, tmp_path / "art_ours", x)
    _check_compiles(theirs, tmp_path / "art_ort", x)
