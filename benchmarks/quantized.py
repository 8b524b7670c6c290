"""banana int8 vs banana fp32 vs onnxruntime (same QDQ model) vs onnxruntime fp32 on this host, side by side.

    .venv/bin/python benchmarks/quantized.py [--rounds 50] [--budget-s 60] [--no-mac-share]
                                             [--size-models nano-dit,small-dit] [--sizes-only]

Models: a zoo DiT's float export, its W8A8 QDQ graph and the DQAT search's mixed INT4/INT8 plan
(:func:`dqat_mixed_plan`: ``greedy_search`` over INT4/INT8 weights with INT8 activations, the most
accurate plan within 4.5 average weight bits -- the same calls, arguments and budget as
``benchmarks/fidelity.py``'s "mixed DQAT per-step" row). Fastest faithful setting: calibration on
8 seeds (fidelity.py: 64) and no DQAT training -- training changes weight values, never the
plan, a tensor's dtype or a byte of the artifact. Activation scales per step (MSE), the graph of
step 1, the way ``banana quantize`` builds them. banana artifacts: ``banana compile --backend
host`` (integer kernels for the QDQ graphs, untuned default schedules). onnxruntime: all graph
optimisations (its QDQ -> integer-kernel fusions) and as many threads as TVM uses. Engines are
timed round-robin, medians (nano DiT only).

Sizes, for every model in ``--size-models`` (default: the nano DiT, ~1 M parameters, where code
weighs as much as weights, and the small DiT, ~10 M, where weights dominate): the *shipped*
artifact is what an app loads -- the compiled library (``model.so``) plus the weights file;
manifest and reports are build metadata, printed but not counted. ``size_ratio_int8`` /
``size_ratio_mixed``: shipped int8 / mixed artifact over the shipped fp32 artifact of the nano
DiT; ``*_weights``: the weights files alone; ``sizes``: every model's bytes per file kind.

``arm64_dot_mac_share`` comes from ``benchmarks/int8_mac_share.py`` (the arm64 kernel's
disassembly: share of the int8 GEMM hot-loop MACs issued by sdot/smmla); null if that is absent.

``--sizes-only``: no engine is timed and no disassembly read (latency and mac-share fields are
null); the artifacts are the same builds.

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
from typing import Any

import numpy as np

#: The DQAT search's budget in benchmarks/fidelity.py (its "mixed DQAT per-step" plan).
MIXED_MAX_AVG_BITS = 4.5
#: Calibration seeds: fidelity.py and ``banana quantize`` use 64; 8 give the same kind of plan faster.
CALIBRATION_SEEDS = range(1000, 1008)


def dqat_mixed_plan(net: Any, cal: Any, ranges: dict) -> dict:
    """The mixed plan fidelity.py trains with DQAT: greedy search over INT4/INT8 weights, INT8 activations."""
    from banana.compiler.quantize.api import act_elements
    from banana.compiler.quantize.mixed import greedy_search, pick

    res = greedy_search(net, cal, ranges, act_elements(net, cal), weights=("int4", "int8"), acts=("int8",))
    return res.path[pick(res, max_avg_bits=MIXED_MAX_AVG_BITS)]


def build_models(root: Path, model: str = "nano-dit") -> tuple[dict[str, Path], dict[str, Any]]:
    """fp32 / W8A8 / DQAT-mixed ONNX files of ``model``, and facts about the mixed plan."""
    import torch

    from banana.compiler.quantize.api import act_elements
    from banana.compiler.quantize.calibrate import calibrate
    from banana.compiler.quantize.cost import layer_shapes, plan_size
    from banana.compiler.quantize.fakequant import LayerPrecision, QuantDenoiser, quantizable_layers
    from banana.compiler.quantize.qdq import export_qdq
    from banana.compiler.quantize.ranges import activation_ranges
    from banana.compiler.zoo import build_reference

    torch.set_num_threads(1)
    net = build_reference(model)
    cal = calibrate(net, steps=4, seeds=CALIBRATION_SEEDS)
    ranges = activation_ranges(cal, "mse", per_step=True)
    w8 = {n: LayerPrecision("int8", "int8", 0) for n in quantizable_layers(net)}
    mixed = dqat_mixed_plan(net, cal, ranges)
    paths = {"int8": export_qdq(QuantDenoiser(net, w8, ranges, cal.timesteps), root / f"{model}.w8a8.onnx", step=1,
                                int4_as_int8=True)}
    paths["fp32"] = root / f"{model}.w8a8.float.onnx"
    paths["mixed"] = export_qdq(QuantDenoiser(net, mixed, ranges, cal.timesteps), root / f"{model}.mixed.onnx",
                                step=1, float_onnx=paths["fp32"])
    size = plan_size(net, layer_shapes(net, act_elements(net, cal)), mixed)
    info = {"avg_weight_bits": round(float(size["avg_weight_bits"]), 3),
            "int8_layers": sum(1 for p in mixed.values() if p.weight == "int8"), "layers": len(mixed)}
    return paths, info


def _inputs(model: str = "nano-dit") -> dict[str, np.ndarray]:
    from banana.compiler.zoo import example_inputs

    return {k: np.ascontiguousarray(v) for k, v in example_inputs(model).items()}


def banana_runner(path: Path, out: Path) -> tuple[Callable[[], None], dict]:
    import tvm

    from banana.compiler.artifact import Artifact
    from banana.compiler.pipeline import compile_model
    from banana.targets.host import host_vm

    result = compile_model(path, backend="host", out=out)
    artifact = Artifact.open(out)
    # every core, as onnxruntime gets (TVM alone would halve x86 vCPUs)
    vm = host_vm(tvm.runtime.load_module(str(artifact.path(artifact.manifest["entry"]["library"]))))
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


def artifact_bytes(manifest: dict) -> dict[str, int]:
    """Bytes per kind of file: library, weights, shipped (the two: ``artifact.shipped_bytes``), all files."""
    from banana.compiler.artifact import shipped_bytes

    shipped = shipped_bytes(manifest)
    return {"library": shipped["library"], "weights": shipped["weights"], "shipped": shipped["total"],
            "all": sum(f["bytes"] for f in manifest["files"])}


def size_table(root: Path, model: str) -> dict[str, Any]:
    """Compile ``model``'s three plans for the host and measure their artifacts (no timing)."""
    from banana.compiler.pipeline import compile_model

    paths, info = build_models(root, model)
    sizes: dict[str, Any] = {"mixed_plan": info}
    for plan in ("fp32", "int8", "mixed"):
        result = compile_model(paths[plan], backend="host", out=root / f"art-{model}-{plan}")
        sizes[plan] = artifact_bytes(result.manifest)
    return sizes


def print_sizes(model: str, sizes: dict[str, Any]) -> None:
    base = sizes["fp32"]
    info = sizes["mixed_plan"]
    print(f"{model}: shipped = library + weights; mixed = DQAT search, {info['avg_weight_bits']} avg weight bits, "
          f"{info['int8_layers']}/{info['layers']} layers INT8")
    for plan in ("fp32", "int8", "mixed"):
        b = sizes[plan]
        print(f"  {plan:<6} library {b['library'] / 1e6:7.3f} MB  weights {b['weights'] / 1e6:7.3f} MB "
              f"({b['weights'] / base['weights']:.3f}x)  shipped {b['shipped'] / 1e6:7.3f} MB "
              f"({b['shipped'] / base['shipped']:.3f}x)  all files {b['all'] / 1e6:7.3f} MB")


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


def size_ratios(sizes: dict[str, Any], size_models: list[str]) -> dict[str, Any]:
    """The RESULT line's byte ratios (shipped and weights-only, nano DiT; shipped for the others)."""

    def ratio(model: str, plan: str, kind: str) -> float:
        return round(sizes[model][plan][kind] / sizes[model]["fp32"][kind], 4)

    return {
        "size_ratio_int8": ratio("nano-dit", "int8", "shipped"),
        "size_ratio_mixed": ratio("nano-dit", "mixed", "shipped"),
        "size_ratio_int8_weights": ratio("nano-dit", "int8", "weights"),
        "size_ratio_mixed_weights": ratio("nano-dit", "mixed", "weights"),
        **{f"size_ratio_{plan}_{model.replace('-', '_')}": ratio(model, plan, "shipped")
           for model in size_models for plan in ("int8", "mixed")},
    }


def sizes_only(size_models: list[str]) -> None:
    """``--sizes-only``: every model's three builds measured, nothing timed."""
    with tempfile.TemporaryDirectory(prefix="banana-quant-bench-") as tmp:
        sizes = {model: size_table(Path(tmp), model) for model in ["nano-dit", *size_models]}
    for model, table in sizes.items():
        print_sizes(model, table)
    result = {"int8_over_fp32": None, "int8_over_ort_qdq": None, "arm64_dot_mac_share": None,
              **size_ratios(sizes, size_models),
              "mixed_avg_weight_bits": sizes["nano-dit"]["mixed_plan"]["avg_weight_bits"], "sizes": sizes}
    print("RESULT " + json.dumps(result))


def main() -> None:
    from host import time_round_robin  # benchmarks/host.py: the same side-by-side timing loop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--no-mac-share", action="store_true", help="skip the arm64 disassembly (prints null)")
    parser.add_argument("--size-models", default="nano-dit,small-dit",
                        help="zoo models whose artifact sizes are measured (comma-separated; nano-dit always is)")
    parser.add_argument("--sizes-only", action="store_true", help="artifact sizes only: no timing, no mac share")
    args = parser.parse_args()
    size_models = [m for m in args.size_models.split(",") if m and m != "nano-dit"]
    if args.sizes_only:
        sizes_only(size_models)
        return
    with tempfile.TemporaryDirectory(prefix="banana-quant-bench-") as tmp:
        root = Path(tmp)
        models, mixed_info = build_models(root, "nano-dit")
        engines, manifests = {}, {}
        for name in ("int8", "mixed", "fp32"):
            engines[f"banana_{name}"], manifests[name] = banana_runner(models[name], root / f"art-{name}")
        engines["ort_qdq"] = ort_runner(models["int8"])
        engines["ort_fp32"] = ort_runner(models["fp32"])
        ms = time_round_robin(engines, args.rounds, args.budget_s)
        sizes = {"nano-dit": {"mixed_plan": mixed_info, **{k: artifact_bytes(m) for k, m in manifests.items()}}}
        for model in size_models:
            sizes[model] = size_table(root, model)
    print("nano DiT, host, medians of round-robin runs (shared 2-core host: noisy):")
    for name, value in ms.items():
        print(f"  {name:<13} {value:8.3f} ms")
    print("  latency ratios: banana int8/fp32 {:.3f}x, int8/ort-qdq {:.3f}x, int8/ort-fp32 {:.3f}x, "
          "mixed/fp32 {:.3f}x, fp32/ort-fp32 {:.3f}x".format(
              ms["banana_int8"] / ms["banana_fp32"], ms["banana_int8"] / ms["ort_qdq"],
              ms["banana_int8"] / ms["ort_fp32"], ms["banana_mixed"] / ms["banana_fp32"],
              ms["banana_fp32"] / ms["ort_fp32"]))
    for model, table in sizes.items():
        print_sizes(model, table)
    share = None if args.no_mac_share else mac_share()

    result = {
        "int8_over_fp32": round(ms["banana_int8"] / ms["banana_fp32"], 4),
        "int8_over_ort_qdq": round(ms["banana_int8"] / ms["ort_qdq"], 4),
        "arm64_dot_mac_share": share,
        **size_ratios(sizes, size_models),
        "mixed_avg_weight_bits": mixed_info["avg_weight_bits"],
        "mixed_over_fp32": round(ms["banana_mixed"] / ms["banana_fp32"], 4),
        "int8_over_ort_fp32": round(ms["banana_int8"] / ms["ort_fp32"], 4),
        "latency_ms": {k: round(v, 4) for k, v in ms.items()},
        "sizes": sizes,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
