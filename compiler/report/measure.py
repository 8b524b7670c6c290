"""Measured host latency: the whole ``main`` call and every kernel call in it (medians of repeats).

Only the host can be measured here (phones are predicted); this is what validates the
prediction method. Per-kernel times come from the Relax VM's instrument hook (``set_instrument``
is called before and after every VM call instruction; TVM 0.27 has no ``profile=True``), so they
include the hook's own few microseconds per call; the whole-call time comes from the VM's
``time_evaluator`` without the hook. The machine is shared, so every figure is a median over
repeats and the spread is kept.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class HostMeasurement:
    """Medians over ``repeats``; ``per_call_ms[i]`` is the i-th kernel call of ``main`` in order."""

    latency_ms: float
    latency_min_ms: float
    latency_max_ms: float
    repeats: int
    per_call_ms: list[float]
    per_call_kernel: list[str]
    instrument_overhead_ms: float

    def per_kernel_ms(self) -> dict[str, float]:
        """Total time per kernel name over all its calls in one ``main`` run."""
        out: dict[str, float] = {}
        for name, ms in zip(self.per_call_kernel, self.per_call_ms, strict=True):
            out[name] = out.get(name, 0.0) + ms
        return out

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "latency_min_ms": self.latency_min_ms,
                "latency_max_ms": self.latency_max_ms, "repeats": self.repeats,
                "instrument_overhead_ms": self.instrument_overhead_ms, "kind": "measured"}


def measure_vm(executable: Any, args: Sequence[np.ndarray], kernels: set[str], repeats: int = 7,
               entry: str = "main") -> HostMeasurement:
    """Time ``entry`` on the host CPU: whole call (time_evaluator) and each kernel call (instrument).

    ``kernels`` are the PrimFunc names to record (VM builtins such as reshape are skipped).
    """
    import tvm
    from tvm import relax

    device = tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    vm.save_function(entry, "banana_timed", *tensors)
    timer = vm.time_evaluator("banana_timed", device, number=1, repeat=repeats, min_repeat_ms=0)
    vm["banana_timed"]()  # warm-up: thread pool, page faults
    results = [r * 1e3 for r in timer().results]

    runs: list[list[tuple[str, float]]] = []
    current: list[tuple[str, float]] = []
    starts: dict[str, float] = {}

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *rest: Any) -> int:
        if symbol not in kernels:
            return 0
        now = time.perf_counter()
        if before:
            starts[symbol] = now
        else:
            current.append((symbol, (now - starts.pop(symbol)) * 1e3))
        return 0

    # The hook costs Python time: measure it on a no-op call pair to report it.
    t0 = time.perf_counter()
    for _ in range(100):
        instrument(None, "__none__", True, None)
    overhead_ms = (time.perf_counter() - t0) * 1e3 / 100

    vm.set_instrument(tvm.runtime.convert(instrument) if hasattr(tvm.runtime, "convert") else instrument)
    for _ in range(max(3, repeats)):
        current = []
        vm["banana_timed"]()
        runs.append(current)
    per_call_kernel = [name for name, _ in runs[0]]
    per_call_ms = [statistics.median(run[i][1] for run in runs) for i in range(len(per_call_kernel))]
    return HostMeasurement(
        latency_ms=statistics.median(results),
        latency_min_ms=min(results),
        latency_max_ms=max(results),
        repeats=len(results),
        per_call_ms=per_call_ms,
        per_call_kernel=per_call_kernel,
        instrument_overhead_ms=overhead_ms,
    )
