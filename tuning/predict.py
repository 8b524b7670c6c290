"""The ``predict`` runner: cost each candidate with a model of the target SoC, no device needed.

Each backend has its model (one module each): :mod:`~banana.tuning.predict_cpu` reads the
candidate's loop nest as LLVM will compile it for CPU cores (host x86 or the SoC's arm64 big
cores), :mod:`~banana.tuning.predict_hvx` is the same model with the SoC's HVX vectors and
contexts, :mod:`~banana.tuning.predict_gpu` a work-item roofline for OpenCL candidates. All
machine numbers come from the SoC registry (or the host description). The builder costs a
candidate and writes the figure as its "artifact"; the runner hands it back as the run time.
Validation against measured host times: ``benchmarks/predict_runner.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from banana.compiler.errors import BadConfigError
from banana.tuning.predict_cpu import CoreModel, predict_cpu_seconds

__all__ = ["CoreModel", "PredictBuilder", "PredictRunner", "cost_function", "predict_seconds"]

CostFunction = Callable[[tvm.IRModule], float]


def predict_seconds(mod: tvm.IRModule, machine: CoreModel) -> float:
    """Predicted run time of a scheduled single-PrimFunc module on CPU-like ``machine``."""
    return predict_cpu_seconds(mod, machine)


def cost_function(soc: Any, backend: str) -> CostFunction:
    """The cost model of ``backend`` on ``soc``, parameterised from the registry."""
    if backend in ("host", "cpu"):
        machine = CoreModel.from_soc(soc, backend)
        return lambda mod: predict_cpu_seconds(mod, machine)
    if backend == "hexagon":
        from banana.tuning.predict_hvx import hvx_machine

        hvx = hvx_machine(soc)
        return lambda mod: predict_cpu_seconds(mod, hvx)
    if backend == "adreno":
        from banana.tuning.predict_gpu import GpuModel, predict_gpu_seconds

        gpu = GpuModel.from_soc(soc)
        return lambda mod: predict_gpu_seconds(mod, gpu)
    raise BadConfigError(f"--runner predict: no cost model for backend '{backend}'")


@derived_object
class PredictBuilder(ms.builder.PyBuilder):
    """'Builds' a candidate by costing it: the artifact is a JSON file with the predicted time."""

    def __init__(self, cost: CostFunction | CoreModel) -> None:
        super().__init__()
        if isinstance(cost, CoreModel):
            machine = cost
            cost = lambda mod: predict_cpu_seconds(mod, machine)  # noqa: E731 - captured machine
        self.cost = cost

    def build(self, build_inputs: list[Any]) -> list[Any]:
        results = []
        for item in build_inputs:
            try:
                seconds = float(self.cost(item.mod))
            except Exception as exc:  # noqa: BLE001 - an uncostable candidate is a failed build
                results.append(ms.builder.BuilderResult(None, f"predict: {exc}"))
                continue
            # one directory per artifact: MetaSchedule's RemoveBuildArtifact deletes the artifact's
            # whole parent directory (a bare file in $TMPDIR would take $TMPDIR with it)
            path = os.path.join(tempfile.mkdtemp(prefix="banana-predict-"), "cost.json")
            with open(path, "w") as handle:
                json.dump({"predicted_s": seconds}, handle)
            results.append(ms.builder.BuilderResult(path, None))
        return results


@derived_object
class _DoneFuture(ms.runner.PyRunnerFuture):
    def __init__(self, result: Any) -> None:
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        return self._result


@derived_object
class PredictRunner(ms.runner.PyRunner):
    """Returns the predicted time written by :class:`PredictBuilder` as the candidate's run time."""

    def run(self, runner_inputs: list[Any]) -> list[Any]:
        futures = []
        for item in runner_inputs:
            try:
                with open(item.artifact_path) as handle:
                    seconds = float(json.load(handle)["predicted_s"])
                futures.append(_DoneFuture(ms.runner.RunnerResult([seconds], None)))
            except (OSError, ValueError, KeyError) as exc:
                futures.append(_DoneFuture(ms.runner.RunnerResult(None, f"predict: {exc}")))
        return futures
