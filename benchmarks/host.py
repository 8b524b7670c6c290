"""banana tuned vs untuned vs onnxruntime vs PyTorch on this host, fp32, measured side by side.

    .venv/bin/python benchmarks/host.py --tuning-db tuning-db [--models nano-dit-random,small-dit]

Tuned = ``banana compile --backend host --tuning-db DB`` (records from ``banana tune``; tasks
without records keep the default rules), untuned = the same build without the database,
onnxruntime with all graph optimisations and all cores, PyTorch eager under inference_mode with
all cores. Engines are timed round-robin (one run each per round) so machine load hits them alike;
each figure is the median over rounds. Ratios are latency ratios (< 1: banana tuned is faster).
Ends with ``RESULT {"tuned_over_ort": ..., "tuned_over_untuned": ..., "tuned_over_torch": ...}``
for the first model, and the same keys per model under ``"models"``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _banana_runner(model: str, out: Path, tuning_db: Path | None) -> tuple[Callable[[], None], dict]:
    import tvm
    from tvm import relax

    from banana.compiler.artifact import Artifact
    from banana.compiler.pipeline import compile_model
    from banana.compiler.zoo import example_inputs

    result = compile_model(f"zoo:{model}", backend="host", out=out, tuning_db=tuning_db)
    artifact = Artifact.open(out)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact.path("model.so"))), tvm.cpu())
    inputs = example_inputs(model)
    args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[spec["name"]])) for spec in artifact.manifest["inputs"]]
    args += [tvm.runtime.tensor(w) for w in artifact.load_weights()]
    vm.set_input("main", *args)
    info = result.manifest.get("tuning", {})
    return (lambda: vm.invoke_stateful("main")), info


def _ort_runner(model: str) -> Callable[[], None]:
    import onnxruntime as ort

    from banana.compiler.pipeline import resolve_model
    from banana.compiler.zoo import example_inputs

    path, _ = resolve_model(f"zoo:{model}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in example_inputs(model).items() if k in names}
    return lambda: session.run(None, feed)


def _torch_runner(model: str) -> Callable[[], None]:
    import torch

    from banana.compiler.zoo import build_reference, example_inputs

    torch.set_num_threads(os.cpu_count() or 1)
    module = build_reference(model)
    inputs = [torch.from_numpy(v) for v in example_inputs(model).values()]

    def run() -> None:
        with torch.inference_mode():
            module(*inputs)

    return run


def time_round_robin(engines: dict[str, Callable[[], None]], rounds: int, budget_s: float,
                     settle_s: float = 0.01) -> dict[str, float]:
    """Median ms per engine, one run each per round. ``settle_s``: a pause after every run, because
    thread pools (onnxruntime's, TVM's, PyTorch's) keep spinning for a while after their work and
    would otherwise slow down whichever engine runs next (seen: 2-3x on the nano DiT)."""
    for fn in engines.values():  # warm up (first-call allocation, thread pools)
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in engines}
    start = time.perf_counter()
    for _ in range(rounds):
        for name, fn in engines.items():
            time.sleep(settle_s)
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuning-db", type=Path, required=True)
    parser.add_argument("--models", default="nano-dit-random,small-dit")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--budget-s", type=float, default=60.0, help="max timing seconds per model")
    args = parser.parse_args()
    per_model = {}
    with tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp:
        for model in args.models.split(","):
            tuned, info = _banana_runner(model, Path(tmp) / f"{model}-tuned", args.tuning_db)
            untuned, _ = _banana_runner(model, Path(tmp) / f"{model}-untuned", None)
            engines = {"tuned": tuned, "untuned": untuned, "ort": _ort_runner(model), "torch": _torch_runner(model)}
            ms = time_round_robin(engines, args.rounds, args.budget_s)
            ratios = {f"tuned_over_{k}": round(ms["tuned"] / ms[k], 4) for k in ("ort", "untuned", "torch")}
            per_model[model] = {**{f"{k}_ms": round(v, 4) for k, v in ms.items()}, **ratios,
                                "tuned_tasks": len(info.get("tuned_tasks", [])),
                                "untuned_tasks": len(info.get("untuned_tasks", []))}
            print(f"{model}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()))
            print(f"  tuned/ort {ratios['tuned_over_ort']:.3f}x  tuned/untuned {ratios['tuned_over_untuned']:.3f}x  "
                  f"tuned/torch {ratios['tuned_over_torch']:.3f}x  ({per_model[model]['tuned_tasks']} tasks tuned, "
                  f"{per_model[model]['untuned_tasks']} on default rules; medians, shared 2-core host: noisy)")
    first = per_model[args.models.split(",")[0]]
    result = {k: first[k] for k in ("tuned_over_ort", "tuned_over_untuned", "tuned_over_torch")}
    result["models"] = per_model
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
