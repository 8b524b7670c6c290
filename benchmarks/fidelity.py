"""Issue 4 fidelity table: PTQ vs DQAT vs onnxruntime quantize_static on the trained nano DiT.

Everything is measured side by side in one run: 4-step sampling, 16 fixed seeds (0..15, class
``seed % 10``), final decoded uint8 samples vs the float model's at the same seeds; calibration
on 64 other seeds (1000..1063) along the same sampler's trajectory. onnxruntime's QDQ models are
run with graph optimisations off (the QDQ reference semantics; its x86 integer kernels saturate
u8s8 products and are reported separately). Ends with one ``RESULT {json}`` line.

    .venv/bin/python benchmarks/fidelity.py [--iterations 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from banana.compiler.quantize.api import act_elements
from banana.compiler.quantize.calibrate import calibrate
from banana.compiler.quantize.cost import layer_shapes, plan_size
from banana.compiler.quantize.dqat import DQATConfig, train_dqat
from banana.compiler.quantize.fakequant import LayerPrecision, QuantDenoiser, quantizable_layers
from banana.compiler.quantize.fidelity import compare, final_samples, write_grid
from banana.compiler.quantize.mixed import greedy_search, pick
from banana.compiler.quantize.ort_baseline import ort_quantize_static
from banana.compiler.quantize.ranges import activation_ranges
from banana.compiler.zoo import build_reference, example_inputs, export_onnx


def ort_fn(path: Path, optimized: bool):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimized:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda lat, t, txt: sess.run(None, {"latent": lat, "timestep": t, "text": txt})[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "banana-fidelity")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    net = build_reference("nano-dit")
    layers = quantizable_layers(net)
    cal = calibrate(net, steps=4)
    ref = final_samples(net, net)
    shapes = layer_shapes(net, act_elements(net, cal))
    rng = {(m, ps): activation_ranges(cal, m, per_step=ps) for m in ("minmax", "mse") for ps in (True, False)}
    rows: list[dict] = []
    images = {"float": ref}
    cfg = DQATConfig(iterations=args.iterations, seed=0)

    def run(label: str, plan: dict, method: str, per_step: bool, dqat: bool) -> float:
        q = QuantDenoiser(net, plan, rng[(method, per_step)], cal.timesteps)
        t = time.perf_counter()
        if dqat:
            train_dqat(q, net, cal, cfg)
        f = compare(ref, final_samples(q, net))
        size = plan_size(net, shapes, plan)
        rows.append({"plan": label, "avg_bits": size["avg_weight_bits"], "model_bytes": size["model_bytes"],
                     "psnr_db": f.psnr_db, "ssim": f.ssim, "seconds": time.perf_counter() - t})
        images[label] = f.images
        print(f"  {label:42s} {f.psnr_db:6.2f} dB  ({time.perf_counter() - t:.0f} s)", flush=True)
        return f.psnr_db

    w8 = {n: LayerPrecision("int8", "int8") for n in layers}
    w4 = {n: LayerPrecision("int4", "int8") for n in layers}
    res = greedy_search(net, cal, rng[("mse", True)], act_elements(net, cal), weights=("int4", "int8"),
                        acts=("int8",))
    mixed = res.path[pick(res, max_avg_bits=4.5)]
    n8 = sum(1 for p in mixed.values() if p.weight == "int8")

    p = {}
    p["w8_mm_ps"] = run("W8A8 PTQ min-max per-step", w8, "minmax", True, False)
    p["w8_mm_st"] = run("W8A8 PTQ min-max static", w8, "minmax", False, False)
    p["w8_mse_ps"] = run("W8A8 PTQ MSE per-step", w8, "mse", True, False)
    p["w8_dqat"] = run("W8A8 DQAT per-step", w8, "mse", True, True)
    p["w4_mm_ps"] = run("W4A8 PTQ min-max per-step", w4, "minmax", True, False)
    p["w4_dqat"] = run("W4A8 DQAT per-step", w4, "mse", True, True)
    p["mx_mm_ps"] = run(f"mixed ({n8} INT8 layers) PTQ min-max per-step", mixed, "minmax", True, False)
    p["mx_mm_st"] = run(f"mixed ({n8} INT8 layers) PTQ min-max static", mixed, "minmax", False, False)
    p["mx_dqat_st"] = run(f"mixed ({n8} INT8 layers) DQAT static", mixed, "mse", False, True)
    p["mx_dqat"] = run(f"mixed ({n8} INT8 layers) DQAT per-step", mixed, "mse", True, True)

    float_onnx = export_onnx(net, example_inputs("nano-dit"), args.out / "nano-dit.opset21.onnx", opset=21)
    weights = {n: net.get_submodule(n).weight.detach().numpy() for n in layers}
    for bits, plan in ((8, w8), (4, w4)):
        path = ort_quantize_static(float_onnx, args.out / f"ort_w{bits}a8.onnx", cal, weights, weight_bits=bits)
        for optimized in (False, True):
            t = time.perf_counter()
            f = compare(ref, final_samples(ort_fn(path, optimized), net))
            size = plan_size(net, shapes, plan)
            label = f"W{bits}A8 onnxruntime quantize_static" + (" (x86 int kernels)" if optimized else "")
            rows.append({"plan": label, "avg_bits": size["avg_weight_bits"], "model_bytes": size["model_bytes"],
                         "psnr_db": f.psnr_db, "ssim": f.ssim, "seconds": time.perf_counter() - t})
            p[f"ort_w{bits}" + ("_opt" if optimized else "")] = f.psnr_db
            if not optimized:
                images[f"ort W{bits}A8"] = f.images

    print()
    print(f"| {'plan':45s} | avg bits | model bytes | PSNR (dB) | SSIM   |")
    print(f"|{'-' * 47}|----------|-------------|-----------|--------|")
    for r in rows:
        print(f"| {r['plan']:45s} | {r['avg_bits']:8.2f} | {r['model_bytes']:11d} | {r['psnr_db']:9.2f} | "
              f"{r['ssim']:.4f} |")
    shown = {k: images[k] for k in images if k in (
        "float", "W8A8 DQAT per-step", f"mixed ({n8} INT8 layers) PTQ min-max per-step",
        f"mixed ({n8} INT8 layers) DQAT per-step", "ort W8A8", "ort W4A8")}
    grid = write_grid(args.out / "grid.png", shown)
    print(f"\ngrid (rows: {', '.join(shown)}): {grid}")
    print(f"per-step minus static: W8A8 PTQ min-max {p['w8_mm_ps'] - p['w8_mm_st']:+.2f} dB, mixed PTQ min-max "
          f"{p['mx_mm_ps'] - p['mx_mm_st']:+.2f} dB, mixed DQAT {p['mx_dqat'] - p['mx_dqat_st']:+.2f} dB")
    print(f"DQAT minus onnxruntime: W8A8 {p['w8_dqat'] - p['ort_w8']:+.2f} dB, "
          f"W4A8 {p['w4_dqat'] - p['ort_w4']:+.2f} dB")
    print(f"total {time.perf_counter() - t0:.0f} s")
    result = {
        "psnr_w8a8": round(p["w8_dqat"], 3),
        "psnr_mixed": round(p["mx_dqat"], 3),
        "avg_bits_mixed": round(plan_size(net, shapes, mixed)["avg_weight_bits"], 4),
        "dqat_minus_ptq_db": round(p["mx_dqat"] - p["mx_mm_ps"], 3),
        "dqat_minus_ort_db": round(p["w8_dqat"] - p["ort_w8"], 3),
        "per_step_minus_static_db": round(p["mx_dqat"] - p["mx_dqat_st"], 3),
    }
    print("RESULT " + json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
