"""Assemble report.json for an artifact: latency (predicted; measured on the host when asked),
memory, thermal and the by-shape DiT projections, then write report.json/.md/.html.

``report_from_module`` is the pipeline's report stage (cheap: analysis of the lowered TIR, no
measurement unless ``measure`` is given); ``repredict`` recomputes every prediction of an existing
report for another SoC without recompiling (the per-kernel work is stored in the report).
"""

from __future__ import annotations

import collections
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from banana.compiler.errors import ArtifactError, BadConfigError, BananaError
from banana.compiler.report.compare import compare_configurations
from banana.compiler.report.machine import CONSTANTS, Machine, machine_for
from banana.compiler.report.roofline import predict_kernel
from banana.compiler.report.shapes import RESOLUTIONS_PX, dit_table, dit_work
from banana.compiler.report.thermal import DVFS_EXPONENT, ENERGY, simulate, thermal_params, workload_power_w
from banana.compiler.report.work import KernelWork, ModelWork
from banana.targets.soc import Soc

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
DEFAULT_STEPS = 4
PRECISION_BYTES = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}


def _kernel_from_json(name: str, d: dict[str, Any]) -> KernelWork:
    fields = {k: d[k] for k in KernelWork.__dataclass_fields__ if k in d}
    return KernelWork(**{**fields, "name": name})


def _latency_section(work: ModelWork, machine: Machine, steps: int) -> dict[str, Any]:
    preds = {name: predict_kernel(k, machine) for name, k in work.kernels.items()}
    counts = collections.Counter(c.kernel for c in work.calls)
    kernels = []
    for name, k in work.kernels.items():
        p = preds[name]
        kernels.append({"name": name, "calls": counts[name], "flops": k.flops, "bytes": k.bytes,
                        "precision": k.precision, "intensity_ops_per_byte": k.flops / k.bytes if k.bytes else None,
                        "parallel": k.parallel, "vectorized": k.vectorized,
                        **p.to_json(), "total_predicted_ms": p.predicted_s * 1e3 * counts[name]})
    kernels.sort(key=lambda r: -r["total_predicted_ms"])
    step = {key: sum(preds[c.kernel].__getattribute__(attr) for c in work.calls) * 1e3
            for key, attr in (("predicted_ms", "predicted_s"), ("low_ms", "low_s"), ("high_ms", "high_s"),
                              ("bound_ms", "bound_s"))}
    return {"kind": "predicted", "soc": machine.soc_id, "backend": machine.backend, "steps": steps,
            "per_step": step, "per_image": {k: v * steps for k, v in step.items()},
            "kernels": kernels, "calls": len(work.calls),
            "total_flops": work.total_flops, "total_bytes": work.total_bytes}


def _memory_section(weights_bytes_fp32: int, n_params: int, work: ModelWork, dit_config: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "weights_bytes_by_precision": {p: int(n_params * b) for p, b in PRECISION_BYTES.items()},
        "weights_bytes_compiled": weights_bytes_fp32,
        "peak_activation_bytes": work.planned_activation_bytes,
        "peak_activation_source": "sum of R.vm.alloc_storage sizes in the lowered main (TVM StaticPlanBlockMemory)",
    }
    if dit_config:
        out["kv_traffic_by_resolution"] = {
            res: {"kv_bytes_gqa": dit_work(dit_config, res, "fp16").kv_bytes_gqa,
                  "kv_bytes_mha": dit_work(dit_config, res, "fp16").kv_bytes_mha, "precision": "fp16",
                  "kind": "predicted"} for res in RESOLUTIONS_PX}
    return out


def _thermal_section(soc: Soc, machine: Machine, work: ModelWork, image_ms: float, steps: int,
                     target_fps: float | None) -> dict[str, Any]:
    params = thermal_params(soc)
    seconds = image_ms / 1e3
    precision = next(iter(work.kernels.values())).precision if work.kernels else "fp32"
    power = workload_power_w(work.total_flops * steps / seconds, work.total_bytes * steps / seconds,
                             machine.backend, precision)
    sim = simulate(params, power, image_ms, duration_s=600.0, dt_s=1.0, target_fps=target_fps)
    return {"kind": "predicted", "params": params.to_json(), "power_w": power,
            "steady_state_unthrottled_c": params.steady_state_c(power), "simulation": sim.to_json(every=10),
            "energy_constants": {k: v.to_json() for k, v in ENERGY.items()}, "dvfs_exponent": DVFS_EXPONENT.to_json(),
            "sources": {k: {"value": f.value, "source": f.source, "verified": f.verified}
                        for k, f in soc.thermal.items()}}


def _targets(per_image_ms: dict[str, float], per_step_ms: dict[str, float], target_ms: float | None,
             target_fps: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if target_ms is not None:
        out["target_ms"] = {"target_ms_per_image": target_ms,
                            "physically_possible": per_image_ms["bound_ms"] <= target_ms,
                            "predicted_feasible": per_image_ms["predicted_ms"] <= target_ms,
                            "feasible_at_best_case": per_image_ms["low_ms"] <= target_ms}
    if target_fps is not None:
        budget = 1000.0 / target_fps
        out["target_fps"] = {"target_fps": target_fps, "budget_ms_per_image": budget,
                             "physically_possible": per_image_ms["bound_ms"] <= budget,
                             "predicted_feasible": per_image_ms["predicted_ms"] <= budget,
                             "feasible_at_best_case": per_image_ms["low_ms"] <= budget}
    return out


def assemble(work: ModelWork, soc: Soc, backend: str, *, model_info: dict[str, Any], steps: int = DEFAULT_STEPS,
             target_ms: float | None = None, target_fps: float | None = None,
             measured: dict[str, Any] | None = None, dit_config: str | None = "1.8b",
             table_socs: list[Soc] | None = None) -> dict[str, Any]:
    """The whole report document (validated by the caller on write)."""
    from banana.targets.soc import list_socs, load_soc

    machine = machine_for(soc, backend)
    latency = _latency_section(work, machine, steps)
    socs = table_socs if table_socs is not None else [load_soc(s) for s in list_socs()]
    machines = [machine_for(s, b) for s in socs for b in ("cpu", "adreno", "hexagon")]
    image_ms = latency["per_image"]["predicted_ms"]
    return {
        "schema_version": 1,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "note": "Every phone figure is a PREDICTION from sourced constants (kind=predicted, with low/high bounds); "
                "only host figures with kind=measured were measured.",
        "model": model_info,
        "soc": {"id": soc.id, "name": soc.name},
        "backend": backend,
        "machine": machine.to_json(),
        "work": work.to_json(),
        "latency": latency,
        "targets": _targets(latency["per_image"], latency["per_step"], target_ms, target_fps),
        "measured": measured,
        "memory": _memory_section(int(model_info.get("weights_bytes", 0)), int(model_info.get("params", 0)),
                                  work, dit_config),
        "thermal": _thermal_section(soc, machine, work, image_ms, steps, target_fps),
        "dit_projection": {"config": dit_config, "kind": "predicted",
                           "rows": dit_table(dit_config, machines) if dit_config else []},
        "comparison": compare_configurations(soc, str(model_info.get("name", "")), dit_config, steps),
        "constants": {k: v.to_json() for k, v in CONSTANTS.items()},
    }


def model_work_from_report(report: dict[str, Any]) -> ModelWork:
    """Rebuild the per-kernel work stored in a report (for re-prediction without recompiling)."""
    from banana.compiler.report.work import KernelCall

    w = report["work"]
    kernels = {name: _kernel_from_json(name, d) for name, d in w["kernels"].items()}
    calls = [KernelCall(index=c["index"], kernel=c["kernel"]) for c in w["calls"]]
    return ModelWork(kernels=kernels, calls=calls, planned_activation_bytes=w.get("planned_activation_bytes"))


def validate_report(document: dict[str, Any], where: Path | str) -> None:
    import jsonschema

    schema = json.loads((Path(__file__).resolve().parent / "report.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
                for e in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))]
    if problems:
        raise ArtifactError(f"{where}: report fails its schema: {problems[0]}")


def write_report(report: dict[str, Any], directory: Path) -> list[Path]:
    """Validate, then write report.json, report.md and report.html into ``directory``."""
    from banana.compiler.report.render import render_html, render_markdown

    validate_report(report, directory / REPORT_JSON)
    paths = [directory / REPORT_JSON, directory / REPORT_MD, directory / REPORT_HTML]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    paths[1].write_text(render_markdown(report))
    paths[2].write_text(render_html(report))
    return paths


def read_report(path: Path) -> dict[str, Any]:
    """Read and schema-check a report.json."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read report ({exc})") from None
    validate_report(document, path)
    return document


def repredict(artifact_dir: Path, soc_name: str | None = None, target_ms: float | None = None,
              target_fps: float | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Re-predict an artifact's report for another SoC (same backend) without recompiling."""
    from banana.compiler.artifact import Artifact
    from banana.targets.host import host_soc
    from banana.targets.soc import load_soc

    artifact = Artifact.open(artifact_dir)
    if not (artifact.directory / REPORT_JSON).is_file():
        raise ArtifactError(f"{artifact.directory / REPORT_JSON}: missing (artifact compiled before reports existed?)")
    old = read_report(artifact.directory / REPORT_JSON)
    backend = old["backend"]
    if soc_name is None:
        soc = host_soc() if old["soc"]["id"] == "host" else load_soc(old["soc"]["id"])
    else:
        soc = load_soc(soc_name)
        if backend == "host":
            backend = "cpu"  # a host artifact re-predicted for a phone: same TIR on the phone's CPU cores
    if backend not in ("host", "cpu", "adreno", "hexagon"):
        raise BadConfigError(f"{artifact.directory}: unknown backend '{backend}' in report")
    work = model_work_from_report(old)
    try:
        report = assemble(work, soc, backend, model_info=old["model"], steps=old["latency"]["steps"],
                          target_ms=target_ms, target_fps=target_fps, measured=old.get("measured"),
                          dit_config=old["dit_projection"]["config"])
    except BananaError:
        raise
    report["repredicted_from"] = {"soc": old["soc"]["id"], "backend": old["backend"]}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_report(report, out_dir)
    return report
