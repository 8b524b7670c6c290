"""Measured latency: on the host, the whole ``main`` call and every kernel call in it (medians of
repeats); on a device behind a TVM RPC tracker (``measure_rpc``), the whole call.

The host measurement is what validates the prediction method; an RPC device (a phone on a
tracker, or any machine running ``tvm.exec.rpc_server``) puts a device figure beside the prediction.

Per-kernel times come from the Relax VM's instrument hook (``set_instrument``
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

    from banana.targets.host import host_vm

    device = tvm.cpu()
    vm = host_vm(executable)
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


@dataclass
class RemoteMeasurement:
    """Whole-call latency of an artifact measured on a device behind a TVM RPC tracker."""

    url: str
    device_key: str
    latency_ms: float
    latency_min_ms: float
    latency_max_ms: float
    repeats: int
    upload_s: float

    def to_json(self) -> dict[str, Any]:
        return {"kind": "measured", "where": "rpc", "rpc": self.url, "device_key": self.device_key,
                "latency_ms": self.latency_ms, "latency_min_ms": self.latency_min_ms,
                "latency_max_ms": self.latency_max_ms, "repeats": self.repeats, "upload_s": self.upload_s}


# Backends whose library a remote TVM runtime runs on its CPU device; the accelerator backends
# need a remote runtime with their device API (OpenCL, Hexagon), which no device here offers.
RPC_CPU_BACKENDS = ("host", "cpu")


def measure_rpc(artifact_dir: Any, url: str, repeats: int = 7, seed: int = 0,
                session_timeout_s: int = 600) -> RemoteMeasurement:
    """Upload the artifact's library to a device from the tracker at ``url`` (``rpc://HOST:PORT/KEY``),
    load the weights there and time the entry function with the remote VM's ``time_evaluator``.

    The timing runs on the device (the network only carries the request and the result), so the
    figure is the device's own per-call latency; inputs are seeded random of the manifest's shapes.
    """
    from pathlib import Path

    import tvm
    from tvm import rpc

    from banana.compiler.artifact import Artifact
    from banana.compiler.errors import BadConfigError, BananaError
    from banana.tuning.runners import parse_runner

    spec = parse_runner(url)
    if spec.kind != "rpc":
        raise BadConfigError(f"--measure {url!r}: expected 'host' or rpc://HOST:PORT/KEY")
    artifact = Artifact.open(Path(artifact_dir))
    if artifact.backend not in RPC_CPU_BACKENDS:
        raise BadConfigError(f"{artifact_dir}: RPC measurement runs {'/'.join(RPC_CPU_BACKENDS)} artifacts on the "
                             f"device's CPU; backend '{artifact.backend}' needs a device runtime with its own API")
    library = artifact.path(artifact.manifest["entry"]["library"])
    import socket

    try:  # fail fast: TVM's own connect retries a refused port for a minute
        socket.create_connection((spec.host, spec.port), timeout=10).close()
        tracker = rpc.connect_tracker(spec.host, spec.port)
        keys = {str(item["key"]).split(":", 1)[-1] for item in tracker.summary()["server_info"]}
        if spec.key not in keys:  # a request for an absent key would wait in the queue forever
            raise BananaError(f"{url}: no device with key '{spec.key}' on the tracker (keys: "
                              f"{', '.join(sorted(keys)) or 'none'})")
        remote = tracker.request(spec.key, priority=1, session_timeout=session_timeout_s)
    except (tvm.error.RPCError, OSError, RuntimeError) as exc:
        raise BananaError(f"{url}: cannot get a device from the tracker ({str(exc).splitlines()[0]})") from None
    t0 = time.perf_counter()
    remote.upload(str(library))
    lib = remote.load_module(library.name)
    device = remote.cpu()
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s.shape).astype(s.dtype) for s in artifact.inputs]
    tensors = [tvm.runtime.tensor(np.require(a, requirements="C"), device) for a in [*inputs, *artifact.load_weights()]]
    upload_s = time.perf_counter() - t0
    vm = tvm.runtime.vm.VirtualMachine(lib, device)
    entry = artifact.manifest["entry"]["function"]
    vm.set_input(entry, *tensors)
    vm.invoke_stateful(entry)  # warm-up on the device
    timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=repeats, min_repeat_ms=0)
    results = [r * 1e3 for r in timer(entry).results]
    return RemoteMeasurement(url=str(spec), device_key=str(spec.key), latency_ms=statistics.median(results),
                             latency_min_ms=min(results), latency_max_ms=max(results), repeats=len(results),
                             upload_s=upload_s)
