"""Run a launch plan on PoCL's CPU OpenCL device with pyopencl, for verification without a phone.

This is banana's whole OpenCL "runtime": allocate every root buffer, upload inputs, params and
constants, enqueue the plan's launches in order with the plan's work sizes, read the outputs.
Views share their base's ``cl.Buffer``. PoCL compiles kernels.cl with its bundled LLVM; the
compiled program is cached per (context, source) for the life of the process. PoCL also caches
binaries on disk in ``$POCL_CACHE_DIR`` (default ``~/.cache/pocl``): set it to a temp dir in tests.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from banana.compiler.errors import BadConfigError, ToolchainError

from .plan import LaunchPlan

log = logging.getLogger(__name__)

_POCL_NAMES = ("portable computing language", "pocl")


@dataclass(frozen=True)
class KernelTiming:
    """Device time of one launch, from OpenCL profiling events."""

    step: int
    kernel: str
    time_ms: float


@dataclass(frozen=True)
class PoclRun:
    """Outputs of one run plus per-launch timings (empty unless profiling was asked for)."""

    outputs: list[np.ndarray]
    timings: list[KernelTiming]
    wall_ms: float
    build_ms: float


class _Device:
    def __init__(self) -> None:
        try:
            import pyopencl as cl
        except ImportError as err:  # pragma: no cover - pyopencl is a dependency
            raise ToolchainError("pyopencl is not installed; it is needed to run OpenCL plans on PoCL") from err
        self.cl = cl
        try:
            platforms = cl.get_platforms()
        except cl.Error as err:
            raise ToolchainError(f"no OpenCL platform available (install pocl-opencl-icd): {err}") from err
        pocl = [p for p in platforms if any(n in p.name.lower() for n in _POCL_NAMES)]
        if not pocl:
            names = ", ".join(p.name for p in platforms) or "none"
            raise ToolchainError(f"no PoCL OpenCL platform found (platforms: {names}); install pocl-opencl-icd")
        devices = pocl[0].get_devices()
        if not devices:
            raise ToolchainError(f"PoCL platform {pocl[0].name!r} has no devices")
        self.device = devices[0]
        self.context = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.context, properties=cl.command_queue_properties.PROFILING_ENABLE)
        self.programs: dict[str, object] = {}
        self.kernels: dict[tuple[str, str], object] = {}

    def program(self, source: str):
        key = hashlib.sha256(source.encode()).hexdigest()
        if key not in self.programs:
            try:
                self.programs[key] = self.cl.Program(self.context, source).build()
            except self.cl.Error as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ToolchainError(f"kernels.cl: PoCL failed to build the OpenCL program: {first}") from err
        return self.programs[key]

    def kernel(self, source: str, name: str):
        """One ``cl.Kernel`` per (program, name): pyopencl warns that re-retrieval is costly."""
        program = self.program(source)
        key = (hashlib.sha256(source.encode()).hexdigest(), name)
        if key not in self.kernels:
            try:
                self.kernels[key] = self.cl.Kernel(program, name)
            except self.cl.Error as err:
                raise ToolchainError(f"kernels.cl: kernel {name} not found in the PoCL program: {err}") from err
        return self.kernels[key]


_DEVICE: _Device | None = None


def _device() -> _Device:
    global _DEVICE
    if _DEVICE is None:
        _DEVICE = _Device()
        log.info("PoCL device: %s", _DEVICE.device.name)
    return _DEVICE


def _check_arrays(kind: str, arrays: Sequence[np.ndarray], plan: LaunchPlan) -> list[np.ndarray]:
    expected = plan.buffers_of_kind(kind)
    if len(arrays) != len(expected):
        raise BadConfigError(f"run_on_pocl: plan takes {len(expected)} {kind}s, got {len(arrays)}")
    out = []
    for arr, buf in zip(arrays, expected, strict=True):
        a = np.asarray(arr)
        if tuple(a.shape) != buf.shape or a.dtype != np.dtype(buf.dtype):
            raise BadConfigError(
                f"run_on_pocl: {kind} {buf.name!r} needs {buf.dtype}{list(buf.shape)}, got {a.dtype}{list(a.shape)}"
            )
        out.append(np.ascontiguousarray(a))
    return out


def _scalar(value: int | float | None, dtype: str | None) -> np.generic:
    return np.dtype(dtype).type(value)


def profile_on_pocl(
    plan: LaunchPlan, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray], *, profile: bool = True
) -> PoclRun:
    """Run the plan once on PoCL; with ``profile`` also time each launch from OpenCL events."""
    dev = _device()
    cl = dev.cl
    t_build = time.perf_counter()
    program = dev.program(plan.source)
    build_ms = (time.perf_counter() - t_build) * 1e3
    host_inputs = _check_arrays("input", inputs, plan)
    host_params = _check_arrays("param", params, plan)
    mf = cl.mem_flags
    max_wg = int(dev.device.max_work_group_size)

    t0 = time.perf_counter()
    cl_buffers: dict[int, object] = {}
    for buf in plan.buffers:
        if buf.kind == "view":
            continue
        host: np.ndarray | None = None
        if buf.kind == "input":
            host = host_inputs[buf.index]  # type: ignore[index]
        elif buf.kind == "param":
            host = host_params[buf.index]  # type: ignore[index]
        elif buf.kind == "constant":
            host = np.ascontiguousarray(buf.constant_value())
        size = max(buf.bytes, 1)  # OpenCL rejects zero-sized buffers
        if host is not None and host.nbytes:
            cl_buffers[buf.id] = cl.Buffer(dev.context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=host)
        else:
            cl_buffers[buf.id] = cl.Buffer(dev.context, mf.READ_WRITE, size=size)

    del program
    kernels = {k.name: dev.kernel(plan.source, k.name) for k in plan.kernels}
    events = []
    for step_no, step in enumerate(plan.steps):
        kernel = kernels[step.kernel]
        if int(np.prod(step.local_work_size)) > max_wg:
            raise ToolchainError(
                f"step {step_no} ({step.kernel}): work-group of {list(step.local_work_size)} exceeds PoCL's {max_wg}"
            )
        for i, arg in enumerate(step.args):
            if arg.buffer is not None:
                kernel.set_arg(i, cl_buffers[plan.root(arg.buffer).id])
            else:
                kernel.set_arg(i, _scalar(arg.scalar, arg.dtype))
        events.append(cl.enqueue_nd_range_kernel(dev.queue, kernel, step.global_work_size, step.local_work_size))

    outputs = []
    for out_id in plan.outputs:
        buf = plan.buffers[out_id]
        host = np.empty(buf.shape, dtype=buf.dtype)
        if host.nbytes:
            cl.enqueue_copy(dev.queue, host, cl_buffers[plan.root(out_id).id])
        outputs.append(host)
    dev.queue.finish()
    wall_ms = (time.perf_counter() - t0) * 1e3

    timings = []
    if profile:
        for step_no, (step, ev) in enumerate(zip(plan.steps, events, strict=True)):
            timings.append(KernelTiming(step_no, step.kernel, (ev.profile.end - ev.profile.start) * 1e-6))
    for b in cl_buffers.values():
        b.release()  # type: ignore[attr-defined]
    return PoclRun(outputs=outputs, timings=timings, wall_ms=wall_ms, build_ms=build_ms)


def run_on_pocl(plan: LaunchPlan, inputs: Sequence[np.ndarray], params: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run the plan on PoCL's CPU device and return ``main``'s outputs as numpy arrays."""
    return profile_on_pocl(plan, inputs, params, profile=False).outputs
