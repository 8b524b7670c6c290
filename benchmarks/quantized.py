"""banana int8 vs banana fp32 vs onnxruntime (same QDQ model) vs onnxruntime fp32 on this host, side by side.

    .venv/bin/python benchmarks/quantized.py [--rounds 50] [--budget-s 60] [--no-mac-share]

Models: the nano DiT's float export, its W8A8 QDQ graph and a mixed INT4/INT8 plan (INT8 for
the input/output/embedding layers, INT4 elsewhere; block 32 on the MLPs) -- activation scales
from a short calibration (8 seeds), the way ``banana quantize`` builds them, without DQAT training
(latency and size do not depend on it). banana artifacts: ``banana compile --backend host``
(integer kernels for the QDQ graphs, untuned default schedules). onnxruntime: all graph
optimisations (its QDQ -> integer-kernel fusions) and as many threads as TVM uses. Engines are
timed round-robin, medians. Sizes: the weights file (``size_ratio_*``) and the whole artifact
including the code library (``*_total``), each over the fp32 artifact's.

``arm64_dot_mac_share`` comes from ``benchmarks/int8_mac_share.py`` (the arm64 kernel's
disassembly: share of the int8 GEMM hot-loop MACs issued by sdot/smmla); null if that is absent.

Ends with ``RESULT {"int8_over_fp32", "int8_over_ort_qdq", "arm64_dot_mac_share", "size_ratio_int8",
"size_ratio_mixed", ...}`` (ratios of latency or bytes, banana first).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Mixed plan: the model's edges (patch embedding, timestep/text embeddings, output projection) in
# INT8, the body (attention, MLP, adaLN modulation) in INT4. With adaLN also in INT8 the weights
# are 0.22x fp32 instead (measured): adaLN holds ~40 % of the nano DiT's parameters.
MIXED_INT8 = ("patch_embed", "t_embed", "text_pool", "final_proj")


def build_models(root: Path) -> dict[str, Path]:
    import torch

    from banana.compiler.quantize.calibrate import calibrate
    from banana.compiler.quantize.fakequant import LayerPrecision, QuantDenoiser, quantizable_layers
    from banana.compiler.quantize.qdq import export_qdq
    from banana.compiler.quantize.ranges import activation_ranges
    from banana.compiler.zoo import build_reference

    torch.set_num_threads(1)
    nano = build_reference("nano-dit")
    cal = calibrate(nano, steps=4, seeds=range(1000, 1008))
    ranges = activation_ranges(cal, "mse")
    layers = quantizable_layers(nano)
    w8 = {n: LayerPrecision("int8", "int8", 0) for n in layers}
    mixed = {n: LayerPrecision("int8", "int8", 0) if n.startswith(MIXED_INT8) else
             LayerPrecision("int4", "int8", 32 if ".mlp." in n else 0) for n in layers}
    paths = {"int8": export_qdq(QuantDenoiser(nano, w8, ranges, cal.timesteps), root / "w8a8.onnx", step=1,
                                int4_as_int8=True)}
    paths["mixed"] = export_qdq(QuantDenoiser(nano, mixed, ranges, cal.timesteps), root / "mixed.onnx", step=1,
                                float_onnx=root / "w8a8.float.onnx")
    paths["fp32"] = root / "w8a8.float.onnx"
    return paths


def _inputs() -> dict[str, np.ndarray]:
    from banana.compiler.zoo import example_inputs

    return {k: np.ascontiguousarray(v) for k, v in example_inputs("nano-dit").items()}


def banana_runner(path: Path, out: Path) -> tuple[Callable[[], None], dict]:
    import tvm
    from tvm import relax

    from banana.compiler.artifact import Artifact
    from banana.compiler.pipeline import compile_model

    result = compile_model(path, backend="host", out=out)
    artifact = Artifact.open(out)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact.path(artifact.manifest["entry"]["library"]))),
                              tvm.cpu())
    feed = _inputs()
    args = [tvm.runtime.tensor(feed[spec["name"]]) for spec in artifact.manifest["inputs"]]
    args += [tvm.runtime.tensor(w) for w in artifact.load_weights()]
    vm.set_input("main", *args)
    return (lambda: vm.invoke_stateful("main")), result.manifest


def ort_runner(path: Path) -> Callable[[], None]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in _inputs().items() if k in names}
    return lambda: session.run(None, feed)


def artifact_bytes(manifest: dict, weights_only: bool) -> int:
    return sum(f["bytes"] for f in manifest["files"] if not weights_only or f["path"] == manifest["weights"]["file"])


def mac_share() -> float | None:
    here = Path(__file__).resolve().parent / "int8_mac_share.py"
    if not here.is_file():
        print("arm64_dot_mac_share: benchmarks/int8_mac_share.py is absent: null")
        return None
    spec = importlib.util.spec_from_file_location("int8_mac_share", here)
    module = importlib.util.module_from_spec(spec)
    sys.modules["int8_mac_share"] = module
    spec.loader.exec_module(module)
    return float(module.dot_mac_share())


def main() -> None:
    from host import time_round_robin  # benchmarks/host.py: the same side-by-side timing loop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--no-mac-share", action="store_true", help="skip the arm64 disassembly (prints null)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="banana-quant-bench-") as tmp:
        root = Path(tmp)
        models = build_models(root)
        engines, manifests = {}, {}
        for name in ("int8", "mixed", "fp32"):
            engines[f"banana_{name}"], manifests[name] = banana_runner(models[name], root / f"art-{name}")
        engines["ort_qdq"] = ort_runner(models["int8"])
        engines["ort_fp32"] = ort_runner(models["fp32"])
        ms = time_round_robin(engines, args.rounds, args.budget_s)
    sizes = {name: (artifact_bytes(m, True), artifact_bytes(m, False)) for name, m in manifests.items()}
    print("nano DiT, host, medians of round-robin runs (shared 2-core host: noisy):")
    for name, value in ms.items():
        print(f"  {name:<13} {value:8.3f} ms")
    print("  latency ratios: banana int8/fp32 {:.3f}x, int8/ort-qdq {:.3f}x, int8/ort-fp32 {:.3f}x, "
          "mixed/fp32 {:.3f}x, fp32/ort-fp32 {:.3f}x".format(
              ms["banana_int8"] / ms["banana_fp32"], ms["banana_int8"] / ms["ort_qdq"],
              ms["banana_int8"] / ms["ort_fp32"], ms["banana_mixed"] / ms["banana_fp32"],
              ms["banana_fp32"] / ms["ort_fp32"]))
    for name, (w, total) in sizes.items():
        print(f"  {name:<6} weights {w / 1e6:.3f} MB ({w / sizes['fp32'][0]:.3f}x), artifact {total / 1e6:.3f} MB "
              f"({total / sizes['fp32'][1]:.3f}x)")
    share = None if args.no_mac_share else mac_share()
    result = {
        "int8_over_fp32": round(ms["banana_int8"] / ms["banana_fp32"], 4),
        "int8_over_ort_qdq": round(ms["banana_int8"] / ms["ort_qdq"], 4),
        "arm64_dot_mac_share": share,
        "size_ratio_int8": round(sizes["int8"][0] / sizes["fp32"][0], 4),
        "size_ratio_mixed": round(sizes["mixed"][0] / sizes["fp32"][0], 4),
        "size_ratio_int8_total": round(sizes["int8"][1] / sizes["fp32"][1], 4),
        "size_ratio_mixed_total": round(sizes["mixed"][1] / sizes["fp32"][1], 4),
        "mixed_over_fp32": round(ms["banana_mixed"] / ms["banana_fp32"], 4),
        "int8_over_ort_fp32": round(ms["banana_int8"] / ms["ort_fp32"], 4),
        "latency_ms": {k: round(v, 4) for k, v in ms.items()},
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
