"""Calibrate the CPU cost-model constants on this host from micro-workloads that are not models.

The host check of the latency method (``benchmarks/predict.py``) must not fit a constant to the
models it validates. So every measured CPU constant of ``machine.CONSTANTS`` gets its own
synthetic workload — one Relax operator of a fixed shape, lowered by the same pipeline the
artifacts use (``lowering.llvm_pipeline``), analysed by the same ``work.py`` and timed with the
same VM — chosen so that the constant being calibrated dominates its predicted time:

============================  ==========================================================
constant                      workload (float32)
============================  ==========================================================
parallel_launch_us            linear [1,1,4] x [1,4,4] + b: one parallel kernel doing ~nothing
serial_call_us                16 chained linear [1,1,4] x [1,4,4] + b: 16 serial kernel calls doing ~nothing
cycles_per_scalar_mac         linear [1,256,128] x [1,128,256] + b: column of 128 lines, held by the L2
cycles_per_scalar_mac_per..   linear [1,32,1024] x [1,1024,1024] + b: column 8x what the L2 holds
                              for its 4 KB stride (roofline.scalar_mac_cycles)
cycles_per_element_moved      transpose [512,512]: a serial copy loop of 1 MB
cycles_per_element_moved_in.. transpose [128,128]: the same strided copy held by the L2
vector_efficiency             polynomial of x [256,1024]: one fused element-wise kernel (Horner, 64 ops per
                              element) the default schedule vectorises
simd_efficiency               linear [1,96,256] x [256,320] + b: with ``gemm_kernels`` banana's
                              register-tiled GEMM (explicit SIMD intrinsics)
============================  ==========================================================

The scalar-reduction workloads keep a batch-1 3-D weight: the GEMM pass
(``compiler/passes/gemm.py``) rewrites only 2-D weights, so they stay on the untiled path (which
batched matmuls, attention's and convolutions' reductions still take) with either pipeline; the
``simd_efficiency`` workload has a 2-D weight, so it is the GEMM kernel when the pipeline has
``gemm_kernels`` and isolates nothing (stated value kept) when it has not. ``calibrate`` lowers every
workload with the pipeline it is given (``gemm_kernels``), the one the checked artifacts use.

Each constant is solved so that the prediction equals the measurement, in the order of
the table (later workloads use the constants solved before them); the prediction is monotone in
each constant, so the value is found by bisection and checked to be the term that sets the time.
Times are the minimum over repeats of the whole call: on a shared machine the minimum is the run
least disturbed by others.
``cycles_per_scalar_op``, ``cycles_per_vector_move`` and ``dram_efficiency`` stay at their stated
first-principles values (no workload isolates them with these schedules), and so does any constant
whose workload the pipeline lowers differently (e.g. ``simd_efficiency`` without the GEMM kernels).
Efficiencies make the prediction fall as they rise; the solver handles either direction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from banana.compiler.report.machine import Constant, Machine
from banana.compiler.report.roofline import predict_kernel
from banana.compiler.report.work import ModelWork

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workload:
    """One calibration workload: a single Relax operator on fixed shapes."""

    constant: str
    description: str
    build: Callable[[], Any]  # () -> IRModule with a ``main``


def single_op_module(shapes: list[tuple[int, ...]], op: Callable[..., Any]) -> Any:
    from tvm import relax

    params = [relax.Var(f"x{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(op(*params))
        bb.emit_func_output(out)
    return bb.get()


def _linear(m: int, k: int, n: int, *, batched_weight: bool = False) -> Callable[[], Any]:
    """x[1,m,k] @ w[k,n] + b[n]: a linear layer (the bias epilogue makes TVM fuse and parallelise it).

    ``batched_weight``: w is [1,k,n], which the GEMM pass leaves to the untiled lowering."""
    from tvm import relax

    w_shape = (1, k, n) if batched_weight else (k, n)
    return lambda: single_op_module([(1, m, k), w_shape, (n,)],
                                    lambda x, w, b: relax.op.add(relax.op.matmul(x, w), b))


def _linear_chain(calls: int) -> Callable[[], Any]:
    """``calls`` tiny linear layers in a row: as many kernel calls (a reduction does not fuse into the next),
    so the per-call cost is measured inside a module, as a model's calls run, not dominated by the cost of
    entering ``main`` once (measured: ~0.5 us per call in such a chain, ~1.9 us for a one-kernel module)."""
    from tvm import relax

    def chain(x: Any, w: Any, b: Any) -> Any:
        for _ in range(calls):
            x = relax.op.add(relax.op.matmul(x, w), b)
        return x

    return lambda: single_op_module([(1, 1, 4), (1, 4, 4), (4,)], chain)


def _polynomial(a: int, b: int, degree: int = 32) -> Callable[[], Any]:
    """A degree-``degree`` polynomial of x by Horner's rule (multiply, add per degree): one fused
    element-wise kernel of 2 x ``degree`` ops per element that the default schedule vectorises, with
    enough arithmetic per byte moved that its compute term sets its time. (Expanded math functions
    such as tanh would do, but nesting them makes the lowering take minutes.)"""
    from tvm import relax

    def horner(x: Any) -> Any:
        y = x
        for i in range(degree):
            y = relax.op.add(relax.op.multiply(y, x), relax.const(1.0 / (i + 2), "float32"))
        return y

    return lambda: single_op_module([(a, b)], horner)


def _transpose(a: int, b: int) -> Callable[[], Any]:
    from tvm import relax

    return lambda: single_op_module([(a, b)], relax.op.permute_dims)


WORKLOADS: tuple[Workload, ...] = (
    Workload("parallel_launch_us", "linear [1,1,4]x[1,4,4]+b (one near-empty parallel kernel)",
             _linear(1, 4, 4, batched_weight=True)),
    Workload("serial_call_us", "16 chained linear [1,1,4]x[1,4,4]+b (16 near-empty serial kernel calls)",
             _linear_chain(16)),
    Workload("cycles_per_scalar_mac", "linear [1,256,128]x[1,128,256]+b (column held by the L2)",
             _linear(256, 128, 256, batched_weight=True)),
    Workload("cycles_per_scalar_mac_per_miss_doubling",
             "linear [1,32,1024]x[1,1024,1024]+b (4 KB stride: K is 8x the L2's capacity for it)",
             _linear(32, 1024, 1024, batched_weight=True)),
    Workload("cycles_per_element_moved", "transpose [512,512] (1 MB serial copy)", _transpose(512, 512)),
    Workload("cycles_per_element_moved_in_l2", "transpose [128,128] (128 KB in and out: held by the L2)",
             _transpose(128, 128)),
    Workload("vector_efficiency", "degree-32 polynomial of x [256,1024] (one vectorised element-wise kernel, "
             "64 ops per element)", _polynomial(256, 1024)),
    Workload("simd_efficiency", "linear [1,96,256]x[256,320]+b (the register-tiled GEMM kernel with gemm_kernels)",
             _linear(96, 256, 320)),
)

#: constants whose rise makes the prediction fall (solved over this range instead of [0, high])
_EFFICIENCIES = {"simd_efficiency": (0.01, 4.0), "vector_efficiency": (0.01, 4.0)}
"""Up to 4: the peak is derived at the nominal clock and counts an FMA as 2 ops; a boosting core that
issues separate adds and multiplies at the FMA rate exceeds that figure (calibrated > 1 on this host)."""


@dataclass
class CalibrationPoint:
    """What one workload measured and what it implies."""

    constant: str
    description: str
    measured_min_ms: float
    measured_median_ms: float
    value: float
    compute_dominates: bool

    def to_json(self) -> dict[str, Any]:
        return {"constant": self.constant, "workload": self.description, "measured_min_ms": self.measured_min_ms,
                "measured_median_ms": self.measured_median_ms, "value": self.value,
                "compute_dominates": self.compute_dominates}


def _with_constant(machine: Machine, name: str, value: float) -> Machine:
    old = machine.constants[name]
    constants = dict(machine.constants)
    constants[name] = Constant(value, value, value, old.unit, old.basis)
    return replace(machine, constants=constants)


def _predicted_s(work: ModelWork, machine: Machine) -> float:
    machine = machine.for_footprint(work.footprint_bytes)  # as the host check predicts the models
    return sum(predict_kernel(work.kernels[c.kernel], machine).predicted_s for c in work.calls)


def _solve(predict: Callable[[float], float], measured_s: float, low: float = 0.0, high: float = 1e4) -> float:
    """The constant at which the monotone (rising or falling) prediction equals the measurement;
    ``low`` when the measurement is beyond the prediction's reach on that side, nan on the other."""
    rising = predict(high) >= predict(low)
    at_low, at_high = predict(low), predict(high)
    if (at_low >= measured_s) if rising else (at_low <= measured_s):
        return low
    if (at_high < measured_s) if rising else (at_high > measured_s):
        return float("nan")
    for _ in range(100):
        mid = 0.5 * (low + high)
        below = predict(mid) < measured_s
        if below == rising:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


CLOCKS = ("wall", "thread-cpu")
"""``wall``: wall-clock time of the whole call (time_evaluator), all cores; what a user waits for.
``thread-cpu``: CPU time of the calling thread (``CLOCK_THREAD_CPUTIME_ID``) with the runtime
limited to one thread (``TVM_NUM_THREADS=1``, set by the caller before TVM starts): cycles this
process really got, so other processes' load barely moves it (only through shared caches)."""


def time_whole_call(executable: Any, args: list[np.ndarray], repeats: int, clock: str = "wall") -> list[float]:
    """Milliseconds of ``repeats`` whole ``main`` calls on the host CPU (after one warm-up)."""
    import time

    import tvm

    from banana.targets.host import host_vm

    device = tvm.cpu()
    vm = host_vm(executable)  # keeps a caller's TVM_NUM_THREADS=1 (the thread-cpu clock)
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    vm.save_function("main", "banana_calibrate", *tensors)
    call = vm["banana_calibrate"]
    call()
    if clock == "thread-cpu":
        times = []
        for _ in range(repeats):
            t0 = time.thread_time_ns()
            call()
            times.append((time.thread_time_ns() - t0) * 1e-6)
        return times
    timer = vm.time_evaluator("banana_calibrate", device, number=1, repeat=repeats, min_repeat_ms=0)
    return [r * 1e3 for r in timer().results]


def thread_copy_bandwidth(nbytes: int = 128 * 2**20, repeats: int = 5) -> float:
    """Host copy bandwidth (bytes/s) timed on this thread's CPU clock: ``targets.host`` measures the same
    numpy copy on the wall clock, which a loaded machine inflates; this is its load-robust twin for
    ``clock="thread-cpu"`` (read + write bytes, best of ``repeats``)."""
    import time

    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        np.copyto(dst, src)
        best = min(best, (time.thread_time_ns() - t0) * 1e-9)
    return 2 * nbytes / best


def calibrate(machine: Machine, target: dict[str, Any], repeats: int = 15,
              workloads: tuple[Workload, ...] = WORKLOADS,
              clock: str = "wall", gemm_kernels: bool | None = None) -> tuple[Machine, list[CalibrationPoint]]:
    """``machine`` with each workload's constant replaced by its value measured here.

    ``gemm_kernels``: the lowering's option (None = its default), the same the checked artifacts are
    built with, so the constants describe the kernels those artifacts contain."""
    import tvm

    from banana.compiler.report.work import analyze_lowered, lower_for_analysis

    rng = np.random.default_rng(0)
    points: list[CalibrationPoint] = []
    for w in workloads:
        mod = w.build()
        lowered = lower_for_analysis(mod, target, gemm_kernels=gemm_kernels)
        work = analyze_lowered(lowered)
        executable = tvm.compile(lowered, target=tvm.target.Target(target), relax_pipeline=None)
        args = [rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32")
                for p in mod["main"].params]
        times = time_whole_call(executable, args, repeats, clock)
        t_min = min(times) * 1e-3

        def predict(c: float, work: ModelWork = work, machine: Machine = machine, name: str = w.constant) -> float:
            return _predicted_s(work, _with_constant(machine, name, c))

        value = _solve(predict, t_min, *_EFFICIENCIES.get(w.constant, (0.0, 1e4)))
        at = _predicted_s(work, _with_constant(machine, w.constant, value))
        # the constant really sets the time there (not the DRAM term or the other constants)
        isolated = value > 0 and _predicted_s(work, _with_constant(machine, w.constant, 0.8 * value)) != at
        isolated = isolated and abs(at - t_min) <= 0.01 * t_min
        point = CalibrationPoint(w.constant, w.description, t_min * 1e3, float(np.median(times)), value, isolated)
        logger.info("calibrated %s = %.3g on %s (min %.3f ms)", w.constant, value, w.description, t_min * 1e3)
        if not isolated:
            logger.warning("calibration of %s: %s does not isolate it (DRAM term dominates?); stated value kept",
                           w.constant, w.description)
        points.append(point)
        if not isolated:  # keep the stated value: this measurement does not determine the constant
            continue
        old = machine.constants[w.constant]
        constants = dict(machine.constants)
        constants[w.constant] = Constant(
            value, min(old.low, value), max(old.high, value), old.unit,
            f"calibrated on this host: {w.description}, min of {repeats} whole calls ({clock} clock) = "
            f"{t_min * 1e3:.4g} ms")
        machine = replace(machine, constants=constants)
    return machine, points
