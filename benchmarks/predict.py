"""Host check of the latency prediction method: predicted vs measured host latency per model.

For each reference model: import, lower with the host pipeline, predict every kernel call with
the host described like a registry SoC (``host_soc()``: derived peak, measured DRAM bandwidth),
build, then measure the whole call (median of repeats) in the same run. The machine is shared:
medians, and the min, are printed. Ends with ``RESULT {"max_abs_error_pct": ..., "models": ...}``.

    .venv/bin/python benchmarks/predict.py [--models nano-dit-random,nano-unet,small-dit] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import sys

import tvm

from banana.compiler.frontend.importer import import_onnx
from banana.compiler.pipeline import resolve_model
from banana.compiler.report.machine import machine_for
from banana.compiler.report.measure import measure_vm
from banana.compiler.report.roofline import predict_kernel
from banana.compiler.report.work import analyze_lowered, lower_for_analysis
from banana.compiler.zoo import example_inputs
from banana.targets.host import host_soc, host_target


def check(name: str, repeats: int) -> dict[str, float]:
    path, _ = resolve_model(f"zoo:{name}")
    model = import_onnx(path, None)
    target = host_target()
    lowered = lower_for_analysis(model.mod, target)
    work = analyze_lowered(lowered)
    machine = machine_for(host_soc(), "host")
    preds = {k: predict_kernel(v, machine) for k, v in work.kernels.items()}
    predicted = sum(preds[c.kernel].predicted_s for c in work.calls) * 1e3
    low = sum(preds[c.kernel].low_s for c in work.calls) * 1e3
    high = sum(preds[c.kernel].high_s for c in work.calls) * 1e3
    bound = sum(preds[c.kernel].bound_s for c in work.calls) * 1e3
    executable = tvm.compile(lowered, target=tvm.target.Target(target), relax_pipeline=None)
    inputs = example_inputs(name)
    measured = measure_vm(executable, [*inputs.values(), *model.weights], set(work.kernels), repeats=repeats)
    error = 100.0 * (predicted - measured.latency_ms) / measured.latency_ms
    return {"predicted_ms": predicted, "low_ms": low, "high_ms": high, "bound_ms": bound,
            "measured_median_ms": measured.latency_ms, "measured_min_ms": measured.latency_min_ms,
            "measured_max_ms": measured.latency_max_ms, "error_pct": error,
            "predicted_over_measured": predicted / measured.latency_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="nano-dit-random,nano-unet,small-dit")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    soc = host_soc()
    print(f"host: {soc.name}; peak fp32 {soc.peak_ops_per_s('host', 'fp32') / 1e9:.1f} Gop/s (derived), "
          f"DRAM {soc.dram_bandwidth_bytes_per_s / 1e9:.1f} GB/s (measured)")
    results = {}
    for name in args.models.split(","):
        r = check(name, args.repeats)
        results[name] = r
        print(f"{name:16} predicted {r['predicted_ms']:9.2f} ms [{r['low_ms']:.2f}-{r['high_ms']:.2f}]  measured "
              f"median {r['measured_median_ms']:9.2f} ms (min {r['measured_min_ms']:.2f}, max "
              f"{r['measured_max_ms']:.2f})  predicted/measured {r['predicted_over_measured']:.2f}  error "
              f"{r['error_pct']:+.1f} %  bound {r['bound_ms']:.3f} ms", flush=True)
    worst = max(abs(r["error_pct"]) for r in results.values())
    print("RESULT " + json.dumps({"max_abs_error_pct": round(worst, 1), "models": {
        k: {"predicted_ms": round(v["predicted_ms"], 3), "measured_ms": round(v["measured_median_ms"], 3),
            "error_pct": round(v["error_pct"], 1)} for k, v in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
