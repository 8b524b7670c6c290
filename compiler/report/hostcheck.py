"""Host check of the latency method: compile a model for ``host`` with the real pipeline, predict
its per-step latency with the report's roofline, measure it here, compare.

The host is described like any registry SoC (``targets.host.host_soc``: cores and clock from the
OS, derived fp32 peak, measured DRAM bandwidth). The CPU constants come either as stated in
``machine.CONSTANTS`` or calibrated on this host by ``calibrate.calibrate`` on synthetic
workloads that are *not* the models checked here, so the check validates rather than fits.

Both CPU pipelines can be checked (``gemm_kernels``: banana's register-tiled fp32 GEMM kernels on
or off; None = the lowering's default): the calibration, the build and its report's analysis then
all use that pipeline, so the constants describe the kernels the checked artifacts contain.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from banana.compiler.report.machine import Machine
from banana.compiler.report.roofline import predict_kernel
from banana.compiler.report.work import ModelWork

logger = logging.getLogger(__name__)


def load_average() -> tuple[float, float, float]:
    """1/5/15-minute load averages (the measurements are only as good as the machine is quiet)."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def predict_step_ms(work: ModelWork, machine: Machine) -> dict[str, Any]:
    """Per-step prediction (ms) and each kernel's mark: which term sets its predicted time.

    The memory term uses the last-level cache's bandwidth when the model fits in it
    (``Machine.for_footprint``; only machines with a measured cache bandwidth, i.e. this host)."""
    machine = machine.for_footprint(work.footprint_bytes)
    preds = {name: predict_kernel(k, machine) for name, k in work.kernels.items()}
    total = {"predicted_ms": 0.0, "low_ms": 0.0, "high_ms": 0.0, "bound_ms": 0.0}
    by_mark = {"compute": 0.0, "memory": 0.0}
    for call in work.calls:
        p = preds[call.kernel]
        total["predicted_ms"] += p.predicted_s * 1e3
        total["low_ms"] += p.low_s * 1e3
        total["high_ms"] += p.high_s * 1e3
        total["bound_ms"] += p.bound_s * 1e3
        by_mark[p.predicted_kind] += p.predicted_s * 1e3
    return {**total, "predicted_ms_by_mark": by_mark,
            "marks": {name: p.predicted_kind for name, p in preds.items()}}


@contextlib.contextmanager
def lowering_variant(gemm_kernels: bool | None) -> Iterator[None]:
    """Every LLVM lowering inside (the backend's build and the report's analysis) uses ``gemm_kernels``.

    ``banana.compiler.lowering`` takes the option only as an argument and the backends call it with
    its default, so for the check of the non-default pipeline its ``llvm_pipeline`` is wrapped for
    the duration (both ``compile_llvm`` and ``work.lower_for_analysis`` look it up at call time).
    A context option in the lowering module would replace this. None: nothing is changed.
    """
    if gemm_kernels is None:
        yield
        return
    from banana.compiler import lowering

    original = lowering.llvm_pipeline

    def pipeline(target: Any, **kwargs: Any) -> Any:
        return original(target, **{**kwargs, "gemm_kernels": gemm_kernels})

    lowering.llvm_pipeline = pipeline  # type: ignore[assignment]
    try:
        yield
    finally:
        lowering.llvm_pipeline = original  # type: ignore[assignment]


def compile_for_host(model: str, out: Path, gemm_kernels: bool | None = None) -> Path:
    """``banana compile MODEL --backend host`` into ``out`` (reused if it is already there)."""
    from banana.compiler.pipeline import compile_model

    if not (out / "manifest.json").is_file():
        with lowering_variant(gemm_kernels):
            compile_model(model, backend="host", out=out)
    return out


def measure_artifact_ms(artifact_dir: Path, repeats: int, seed: int = 0, clock: str = "wall") -> list[float]:
    """Whole-call latencies (ms) of a host artifact's entry, ``repeats`` times after a warm-up."""
    import tvm

    from banana.compiler.artifact import Artifact
    from banana.compiler.report.calibrate import time_whole_call

    artifact = Artifact.open(artifact_dir)
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s.shape).astype(s.dtype) for s in artifact.inputs]
    lib = tvm.runtime.load_module(str(artifact.path(artifact.manifest["entry"]["library"])))
    return time_whole_call(lib, [*inputs, *artifact.load_weights()], repeats, clock)


def check_model(model: str, workdir: Path, machines: dict[str, Machine], repeats: int = 7,
                clock: str = "wall", gemm_kernels: bool | None = None) -> dict[str, Any]:
    """Predicted (one entry per named machine) vs measured per-step latency of ``model`` here,
    built with the pipeline variant ``gemm_kernels`` (see :func:`lowering_variant`)."""
    from banana.compiler.report.build import model_work_from_report, read_report

    variant = {None: "", True: "_gemm", False: "_nogemm"}[gemm_kernels]
    artifact = compile_for_host(model, workdir / (model.replace(":", "_") + variant), gemm_kernels)
    work = model_work_from_report(read_report(artifact / "report.json"))
    load_before = load_average()
    times = measure_artifact_ms(artifact, repeats, clock=clock)
    out: dict[str, Any] = {
        "model": model, "calls": len(work.calls), "kernels": len(work.kernels), "flops": work.total_flops,
        "bytes": work.total_bytes, "measured_median_ms": statistics.median(times), "measured_min_ms": min(times),
        "measured_max_ms": max(times), "repeats": len(times), "clock": clock, "load_average_1min": load_before[0],
        "predicted": {},
    }
    for label, machine in machines.items():
        p = predict_step_ms(work, machine)
        p["error_pct_vs_median"] = 100.0 * (p["predicted_ms"] - out["measured_median_ms"]) / out["measured_median_ms"]
        p["error_pct_vs_min"] = 100.0 * (p["predicted_ms"] - out["measured_min_ms"]) / out["measured_min_ms"]
        out["predicted"][label] = p
    return out
