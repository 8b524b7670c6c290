"""Latency, memory and thermal reports written next to every artifact (``banana report OUT``).

Phone figures are predictions from sourced constants (roofline per kernel of the lowered TIR,
stated efficiency constants, lumped RC thermal model), always with bounds; host figures can be
measured to validate the method (``benchmarks/predict.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from banana.compiler.report.build import (
    REPORT_HTML,
    REPORT_JSON,
    REPORT_MD,
    assemble,
    read_report,
    repredict,
    write_report,
)
from banana.compiler.report.work import ModelWork, analyze_lowered, lower_for_analysis

logger = logging.getLogger(__name__)

__all__ = ["REPORT_HTML", "REPORT_JSON", "REPORT_MD", "ModelWork", "analyze_lowered", "assemble",
           "lower_for_analysis", "measure_artifact", "measure_host_artifact", "read_report", "report_stage",
           "repredict", "write_report"]


def analysis_target(backend: str, target: dict[str, Any], soc: Any) -> dict[str, Any]:
    """LLVM target whose lowering is analysed: the artifact's own for host/cpu; for adreno/hexagon
    (whose kernels are scheduled differently) the SoC's CPU target, i.e. the same fused kernels."""
    if backend in ("host", "cpu") and target.get("kind") == "llvm":
        return target
    from banana.targets.soc import cpu_target

    return cpu_target(soc)


def report_stage(imported: Any, soc: Any, backend: str, target: dict[str, Any], out_dir: Path, *,
                 reference: str | None = None, steps: int = 4, target_ms: float | None = None,
                 target_fps: float | None = None) -> dict[str, Any]:
    """The pipeline's report stage: analyse the lowered module, predict, write the three files."""
    import math

    work = analyze_lowered(lower_for_analysis(imported.mod, analysis_target(backend, target, soc)))
    params = sum(int(math.prod(w.shape)) for w in imported.weights)
    model_info = {"name": reference or Path(str(imported.source_path)).stem, "sha256": imported.sha256,
                  "params": params, "weights_bytes": int(imported.weight_bytes)}
    report = assemble(work, soc, backend, model_info=model_info, steps=steps, target_ms=target_ms,
                      target_fps=target_fps)
    write_report(report, out_dir)
    return report


def measure_host_artifact(artifact_dir: Path, repeats: int = 7, seed: int = 0) -> dict[str, Any]:
    """Measure a host artifact here (whole call and per kernel) and store it in its report."""
    import numpy as np

    from banana.compiler.artifact import Artifact
    from banana.compiler.errors import BadConfigError
    from banana.compiler.report.measure import measure_vm

    artifact = Artifact.open(artifact_dir)
    if artifact.backend != "host":
        raise BadConfigError(f"{artifact_dir}: only host artifacts can be measured here (backend "
                             f"'{artifact.backend}')")
    import tvm

    report = read_report(artifact.directory / REPORT_JSON)
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s.shape).astype(s.dtype) for s in artifact.inputs]
    lib = tvm.runtime.load_module(str(artifact.path(artifact.manifest["entry"]["library"])))
    m = measure_vm(lib, [*inputs, *artifact.load_weights()], set(report["work"]["kernels"]), repeats=repeats)
    return {**m.to_json(), "per_kernel_ms": m.per_kernel_ms()}


def measure_artifact(artifact_dir: Path, where: str = "host", repeats: int = 7) -> dict[str, Any]:
    """``banana report OUT --measure WHERE``: ``host`` (here, per kernel too) or ``rpc://HOST:PORT/KEY``."""
    from banana.compiler.errors import BadConfigError

    if where == "host":
        return {**measure_host_artifact(artifact_dir, repeats=repeats), "where": "host"}
    if where.startswith("rpc://"):
        from banana.compiler.report.measure import measure_rpc

        return measure_rpc(artifact_dir, where, repeats=repeats).to_json()
    raise BadConfigError(f"--measure {where!r}: expected 'host' or rpc://HOST:PORT/KEY")
