"""Correctness gate for tuning records: a candidate enters the database only if it computes what
the untuned task computes.

The task's untuned PrimFunc (plain loop nest: the reference) is built for *this* machine and run
on seeded random buffers; the candidate runs on the same buffers and every buffer (inputs
untouched, outputs written) must then agree. Where the candidate runs:

- LLVM targets (host, arm64) and Hexagon: built for this host from the same scheduled TIR. The
  schedule, not the target's code generator, is what tuning changes; arm64 and HVX code
  generation is checked end to end by ``banana compile --verify`` (qemu-aarch64) and by the
  Hexagon build, not per candidate (qemu-hexagon cannot run float HVX).
- OpenCL (Adreno): thread-bound GPU code cannot run as host code, so the candidate is compiled to
  OpenCL C by TVM and run on PoCL through banana's launch plan (``targets/opencl``) — the same
  kernel source a phone would get, executed by PoCL's CPU device.
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


def _for_host(mod: tvm.IRModule) -> tvm.IRModule:
    """Drop a PrimFunc's bound ``target`` attribute (the OpenCL lowering binds one) so it builds here."""
    funcs = {gv: (f.without_attr("target") if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
                  and "target" in f.attrs else f) for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs)


def _run(mod: tvm.IRModule, target: tvm.target.Target, arrays: list[np.ndarray]) -> list[np.ndarray]:
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(_for_host(mod))
    lib = tvm.compile(mod, target=target)
    device = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, device) for a in arrays]
    lib["main"](*tensors)
    return [t.numpy() for t in tensors]


def _run_opencl(mod: tvm.IRModule, target: dict[str, Any], arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Run one GPU-scheduled PrimFunc on PoCL: a one-call Relax ``main`` -> launch plan -> pyopencl.

    Buffers the PrimFunc stores to are its outputs (Relax's fused PrimFuncs write only those);
    the others are inputs. Returns every buffer in parameter order, like :func:`_run`.
    """
    from tvm import relax, tirx

    from banana.targets.opencl import extract_launch_plan, run_on_pocl

    func = mod["main"].with_attr("tirx.is_scheduled", True)
    stores: list[Any] = []
    tvm_ffi.structural_walk(func.body, [(tirx.BufferStore, stores.append)], order="pre")
    written = [i for i, p in enumerate(func.params) if any(st.buffer.same_as(p) for st in stores)]

    def tensor_type(param: Any) -> Any:
        return relax.TensorType([int(d) for d in param.ty.shape], str(param.ty.dtype))

    inputs = [relax.Var(f"arg{i}", tensor_type(p)) for i, p in enumerate(func.params) if i not in written]
    outputs = [tensor_type(func.params[i]) for i in written]
    builder = relax.BlockBuilder()
    with builder.function("main", inputs):
        with builder.dataflow():
            kernel = builder.add_func(func, "candidate")
            call = builder.emit(relax.call_tir(kernel, inputs, outputs[0] if len(outputs) == 1 else outputs))
            result = builder.emit_output(call)
        builder.emit_func_output(result)
    plan = extract_launch_plan(builder.get(), target)
    got = run_on_pocl(plan, [a for i, a in enumerate(arrays) if i not in written], [])
    merged = [a.copy() for a in arrays]
    for index, value in zip(written, got, strict=True):
        merged[index] = np.asarray(value).reshape(arrays[index].shape)
    return merged


@dataclass
class CandidateChecker:
    """Checks scheduled modules against their workload; reference outputs are cached per task.

    ``target``: the tuning target (dict). OpenCL candidates run on PoCL; all others on this host.
    """

    seed: int = 0
    rtol: float = 1e-3
    atol: float = 1e-4
    target: dict[str, Any] | None = None
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
        on_gpu = self.target is not None and self.target.get("kind") == "opencl"
        try:
            if on_gpu:
                got = _run_opencl(scheduled, self.target, [a.copy() for a in inputs])
            else:
                got = _run(scheduled, _host_target(), [a.copy() for a in inputs])
        except Exception as exc:  # noqa: BLE001 - any build/run failure means "cannot trust it"
            where = "PoCL" if on_gpu else "this host"
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            return CheckResult(False, f"could not build/run on {where}: {lines[0]}")
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
