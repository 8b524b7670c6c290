"""``banana quantize``: calibrate -> (search) -> DQAT -> fidelity -> QDQ ONNX + plan.json + report.

One function, :func:`quantize`, used by the CLI and tests. Output directory (written atomically):

    model.qdq.onnx        QDQ ONNX, opset 21, per-step activation scales as a table indexed by
                          the extra int64 input ``step`` (packed INT4, block-wise DQ): what
                          ``banana compile`` takes -- one artifact whose ``main`` takes ``step``
                          too and selects each layer's per-step constants at run time
                          (host/cpu/hexagon; adreno: a per-step graph)
    model.step{i}.onnx    one graph per step, constant scales, compatibility form (INT4 codes in
                          INT8, block scales as Mul): for tools without per-step scales (and
                          ``banana compile --backend adreno``); the same outputs, bit for bit
    model.float.onnx      the float export the QDQ graphs were rewritten from (DQAT weights)
    plan.json             every layer's precision and scales, sizes, fidelity, Pareto front
    fidelity.md, grid.png per-layer SQNR table, PSNR/SSIM per plan, float vs plans at the same seeds
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from banana.compiler.artifact import staged_directory
from banana.compiler.errors import BadConfigError
from banana.compiler.quantize.calibrate import CALIBRATION_SEEDS, Calibration, calibrate
from banana.compiler.quantize.capabilities import supported_pairs
from banana.compiler.quantize.cost import layer_shapes, plan_size
from banana.compiler.quantize.dqat import DQATConfig, train_dqat
from banana.compiler.quantize.fakequant import LayerPrecision, QuantDenoiser, quantizable_layers
from banana.compiler.quantize.fidelity import FIDELITY_SEEDS, FidelityResult, compare, final_samples, write_grid
from banana.compiler.quantize.mixed import capture_inputs, greedy_search, layer_sqnr, pareto_front, pick
from banana.compiler.quantize.plan import PLAN_FILE, write_plan
from banana.compiler.quantize.qdq import export_qdq
from banana.compiler.quantize.ranges import activation_ranges

log = logging.getLogger(__name__)

UNIFORM_PLANS = {"w8a8": ("int8", "int8"), "w4a8": ("int4", "int8"), "w8a16": ("int8", "int16"),
                 "w4a16": ("int4", "int16"), "w8af16": ("int8", "fp16"), "w4af16": ("int4", "fp16")}


@dataclass
class QuantizeResult:
    out_dir: Path
    plan: dict[str, Any]
    student: QuantDenoiser
    fidelity: FidelityResult
    ptq_fidelity: FidelityResult


def load_model(model: str | nn.Module) -> tuple[nn.Module, str]:
    """A torch denoiser from ``zoo:NAME``/``NAME`` (DQAT trains in torch, so ONNX files are not taken)."""
    if isinstance(model, nn.Module):
        return model.float().eval(), type(model).__name__
    from banana.compiler.zoo import REFERENCE_MODELS, build_reference

    name = str(model).removeprefix("zoo:")
    if name not in REFERENCE_MODELS:
        raise BadConfigError(f"quantize model {model!r}: DQAT needs a torch denoiser; use zoo:NAME "
                             f"({', '.join(REFERENCE_MODELS)}) or the Python API with a torch module")
    return build_reference(name), f"zoo:{name}"


def uniform_plan(model: nn.Module, kind: str, block: int = 0) -> dict[str, LayerPrecision]:
    if kind not in UNIFORM_PLANS:
        raise BadConfigError(f"plan {kind!r}; expected 'search' or one of {', '.join(UNIFORM_PLANS)}")
    w, a = UNIFORM_PLANS[kind]
    return {n: LayerPrecision(w, a, block if w == "int4" else 0) for n in quantizable_layers(model)}


def act_elements(model: nn.Module, cal: Calibration) -> dict[str, int]:
    """Input activation elements per call (batch 1) of each quantized layer."""
    inputs, _ = capture_inputs(model, cal, quantizable_layers(model), per_step=1)
    return {n: int(x[0].numel()) for n, x in inputs.items()}


def _layer_records(student: QuantDenoiser, sqnr: dict[str, float], sens: dict[str, float]) -> list[dict]:
    rows = []
    for name, layer in student.layers().items():
        p = layer.precision
        block = layer.wq.block if layer.wq is not None else 0  # the effective block size
        rec: dict[str, Any] = {"name": name, "weight": p.weight, "act": p.act, "block": block,
                               "params": int(layer.inner.weight.numel()),
                               "sqnr_db": sqnr.get(name), "sensitivity_psnr_db": sens.get(name)}
        if layer.wq is not None:
            s = layer.wq.scale.detach()
            rec["weight_scale"] = {"shape": list(s.shape), "min": float(s.min()), "max": float(s.max())}
        if layer.aq is not None:
            pairs = [layer.aq.params_at(i) for i in range(layer.aq.scale.shape[0])]
            rec["act_scale"] = [p[0] for p in pairs]
            rec["act_zero_point"] = [p[1] for p in pairs]
        rows.append(rec)
    return rows


def _report_md(plan: dict[str, Any], rows: list[tuple[str, dict]]) -> str:
    lines = [f"# Fidelity report: {plan['model']}, {plan['steps']} steps, seeds {plan['fidelity']['seeds']}", "",
             "| plan | avg weight bits | model bytes | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label} | {r['avg_weight_bits']:.2f} | {r['model_bytes']} | {r['psnr_db']:.2f} | "
                     f"{r['ssim']:.4f} |")
    lines += ["", "## Per-layer (final plan)", "",
              "| layer | weight | act | block | params | output SQNR (dB) | PSNR if only this layer is quantized |",
              "|---|---|---|---|---|---|---|"]
    for lay in plan["layers"]:
        sq = "-" if lay.get("sqnr_db") is None else f"{lay['sqnr_db']:.1f}"
        se = "-" if lay.get("sensitivity_psnr_db") is None else f"{lay['sensitivity_psnr_db']:.1f}"
        lines.append(f"| {lay['name']} | {lay['weight']} | {lay['act']} | {lay['block']} | {lay['params']} | "
                     f"{sq} | {se} |")
    return "\n".join(lines) + "\n"


def quantize(
    model: str | nn.Module,
    out: Path | str,
    *,
    steps: int = 4,
    seed: int = 0,
    plan: str = "search",
    backend: str | None = None,
    budget_bytes: int | None = None,
    max_avg_bits: float | None = None,
    block: int = 0,
    method: str = "mse",
    per_step: bool = True,
    calibration_seeds: Sequence[int] = CALIBRATION_SEEDS,
    fidelity_seeds: Sequence[int] = FIDELITY_SEEDS,
    dqat: DQATConfig | None = None,
    pareto_points: int = 6,
    on_progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Quantize ``model`` for ``steps``-step sampling and write QDQ ONNX, plan.json and a report to ``out``."""
    torch.set_num_threads(1)
    progress = on_progress or (lambda _m: None)
    net, label = load_model(model)
    dqat = dqat or DQATConfig(seed=seed)
    cal = calibrate(net, steps=steps, seeds=calibration_seeds, seed=seed, on_progress=progress)
    ranges = activation_ranges(cal, method, per_step=per_step)
    ranges16 = activation_ranges(cal, method, per_step=per_step, bits=16)
    reference = final_samples(net, net, steps=steps, seeds=fidelity_seeds)
    elems = act_elements(net, cal)
    shapes = layer_shapes(net, elems)
    sens: dict[str, float] = {}
    pareto: list[dict] = []
    if plan == "search":
        result = greedy_search(net, cal, ranges, elems, backend=backend, block=block,
                               seeds=fidelity_seeds[:8], on_progress=progress)
        chosen = result.path[pick(result, budget_bytes=budget_bytes, max_avg_bits=max_avg_bits)]
        sens = result.sensitivity
        idx = sorted({round(i) for i in np.linspace(0, len(result.path) - 1, max(pareto_points, 2))})
        for i in idx:
            q = QuantDenoiser(net, result.path[i], _ranges_for(result.path[i], ranges, ranges16), cal.timesteps)
            f = compare(reference, final_samples(q, net, steps=steps, seeds=fidelity_seeds))
            size = result.sizes[i]
            pareto.append({"model_bytes": int(size["model_bytes"]), "avg_weight_bits": size["avg_weight_bits"],
                           "psnr_db": f.psnr_db, "ssim": f.ssim, "method": f"ptq-{method}",
                           "weight_layers": _weight_counts(result.path[i])})
            progress(f"search: front point {len(pareto)}/{len(idx)}: {size['avg_weight_bits']:.2f} bits, "
                     f"{f.psnr_db:.2f} dB")
    else:
        chosen = uniform_plan(net, plan, block)
        allowed = set(supported_pairs(backend))
        bad = sorted({(p.weight, p.act) for p in chosen.values()} - allowed)
        if bad:
            raise BadConfigError(f"plan {plan!r} uses {bad[0][0]}/{bad[0][1]}, which backend {backend!r} cannot run")
    layer_ranges = _ranges_for(chosen, ranges, ranges16)
    student = QuantDenoiser(net, chosen, layer_ranges, cal.timesteps)
    ptq = compare(reference, final_samples(student, net, steps=steps, seeds=fidelity_seeds))
    progress(f"PTQ ({method}): PSNR {ptq.psnr_db:.2f} dB, SSIM {ptq.ssim:.4f}")
    losses = train_dqat(student, net, cal, dqat, on_progress=progress)
    fid = compare(reference, final_samples(student, net, steps=steps, seeds=fidelity_seeds))
    progress(f"DQAT: PSNR {fid.psnr_db:.2f} dB, SSIM {fid.ssim:.4f}")
    inputs, st = capture_inputs(net, cal, quantizable_layers(net))
    sqnr = {n: layer_sqnr(net, {n: inputs[n]}, st, p, {n: layer_ranges[n]})[n]
            for n, p in chosen.items() if p.weight != "fp32"}
    size = plan_size(net, shapes, chosen)
    document: dict[str, Any] = {
        "schema_version": 1, "model": label, "seed": seed, "steps": steps,
        "timesteps": [float(t) for t in cal.timesteps], "backend": backend,
        "calibration": {"seeds": list(cal.seeds), "method": method, "per_step": per_step},
        "dqat": {"iterations": dqat.iterations, "batch": dqat.batch, "losses": losses},
        "layers": _layer_records(student, sqnr, sens),
        "size": {"model_bytes": int(size["model_bytes"]), "conversion_bytes": int(size["conversion_bytes"]),
                 "avg_weight_bits": size["avg_weight_bits"]},
        "fidelity": {"psnr_db": fid.psnr_db, "ssim": fid.ssim, "seeds": [int(s) for s in fidelity_seeds],
                     "steps": steps},
        "pareto": pareto_front(pareto + [{"model_bytes": int(size["model_bytes"]),
                                          "avg_weight_bits": size["avg_weight_bits"], "psnr_db": fid.psnr_db,
                                          "ssim": fid.ssim, "method": "dqat",
                                          "weight_layers": _weight_counts(chosen)}]),
    }
    out = Path(out)
    with staged_directory(out) as staging:
        progress("export: QDQ ONNX")
        export_qdq(student, staging / "model.qdq.onnx", float_onnx=None)
        (staging / "model.qdq.float.onnx").replace(staging / "model.float.onnx")
        for i in range(steps):
            export_qdq(student, staging / f"model.step{i}.onnx", step=i, float_onnx=staging / "model.float.onnx",
                       int4_as_int8=True)
        write_plan(document, staging / PLAN_FILE)
        rows = [("PTQ " + method, {**size, "psnr_db": ptq.psnr_db, "ssim": ptq.ssim}),
                ("DQAT", {**size, "psnr_db": fid.psnr_db, "ssim": fid.ssim})]
        (staging / "fidelity.md").write_text(_report_md(document, rows))
        write_grid(staging / "grid.png", {"float": reference, "ptq": ptq.images, "dqat": fid.images})
    return QuantizeResult(out, document, student, fid, ptq)


def _weight_counts(plan: dict[str, LayerPrecision]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in plan.values():
        counts[p.weight] = counts.get(p.weight, 0) + 1
    return dict(sorted(counts.items()))


def _ranges_for(plan: dict[str, LayerPrecision], r8: dict, r16: dict) -> dict:
    return {n: (r16[n] if p.act == "int16" else r8[n]) for n, p in plan.items() if n in r8}
