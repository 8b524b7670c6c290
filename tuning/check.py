"""Correctness gate for tuning records: a candidate enters the database only if it computes what
the untuned task computes.

Both the task's untuned PrimFunc (plain loop nest: the reference) and the candidate's scheduled
PrimFunc are built for *this* machine and run on the same seeded random buffers; every buffer
(inputs untouched, outputs written) must then agree. Cross-target candidates (arm64) are checked
the same way: the schedule, not the target's code generator, is what tuning changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm_ffi

logger = logging.getLogger(__name__)


@dataclass
class CheckResult:
    ok: bool
    reason: str = ""
    max_abs_error: float = 0.0


def _host_target() -> tvm.target.Target:
    from banana.targets.host import host_target

    return tvm.target.Target(host_target())


def _random_buffers(func: tvm.tirx.PrimFunc, seed: int) -> list[np.ndarray]:
    from tvm.s_tir import meta_schedule as ms

    rng = np.random.default_rng(seed)
    arrays = []
    for info in ms.arg_info.ArgInfo.from_prim_func(func):
        shape = [int(d) for d in info.shape]
        dtype = str(info.dtype)
        if dtype.startswith(("int", "uint")):
            arrays.append(rng.integers(0, 2, size=shape).astype(dtype))
        elif dtype == "bool":
            arrays.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            arrays.append(rng.uniform(-1.0, 1.0, size=shape).astype(dtype))
    return arrays


def _run(mod: tvm.IRModule, target: tvm.target.Target, arrays: list[np.ndarray]) -> list[np.ndarray]:
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    lib = tvm.compile(mod, target=target)
    device = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, device) for a in arrays]
    lib["main"](*tensors)
    return [t.numpy() for t in tensors]


@dataclass
class CandidateChecker:
    """Checks scheduled modules against their workload; reference outputs are cached per task."""

    seed: int = 0
    rtol: float = 1e-3
    atol: float = 1e-4
    _references: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = field(default_factory=dict)

    def _reference(self, workload: tvm.IRModule) -> tuple[list[np.ndarray], list[np.ndarray]]:
        key = tvm_ffi.structural_hash(workload)
        if key not in self._references:
            inputs = _random_buffers(workload["main"], self.seed)
            outputs = _run(workload, _host_target(), [a.copy() for a in inputs])
            self._references[key] = (inputs, outputs)
        return self._references[key]

    def check(self, workload: tvm.IRModule, scheduled: tvm.IRModule) -> CheckResult:
        """Compare ``scheduled`` (the candidate) with ``workload`` (the untuned task)."""
        inputs, expected = self._reference(workload)
        try:
            got = _run(scheduled, _host_target(), [a.copy() for a in inputs])
        except Exception as exc:  # noqa: BLE001 - any build/run failure means "cannot trust it"
            return CheckResult(False, f"could not build/run on this host: {str(exc).splitlines()[0]}")
        worst = 0.0
        for index, (e, g) in enumerate(zip(expected, got, strict=True)):
            if e.dtype.kind == "f":
                scale = float(np.max(np.abs(e))) if e.size else 0.0
                err = float(np.max(np.abs(e.astype(np.float64) - g))) if e.size else 0.0
                worst = max(worst, err)
                if not np.all(np.isfinite(g)) or err > self.atol + self.rtol * scale:
                    return CheckResult(False, f"buffer {index}: max abs error {err:.3e} (scale {scale:.3e})", err)
            elif not np.array_equal(e, g):
                return CheckResult(False, f"buffer {index}: integer/boolean values differ", worst)
        return CheckResult(True, "", worst)

    def check_record(self, record: Any) -> CheckResult:
        """Check a MetaSchedule ``TuningRecord`` (its trace replayed on its workload)."""
        return self.check(record.workload.mod, scheduled_module(record.workload.mod, record.trace))


def scheduled_module(workload: tvm.IRModule, trace: Any) -> tvm.IRModule:
    from tvm import s_tir

    sch = s_tir.Schedule(workload)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return sch.mod
