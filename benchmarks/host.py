"""banana tuned vs untuned vs onnxruntime vs PyTorch on this host, fp32, measured side by side.

    .venv/bin/python benchmarks/host.py --tuning-db tuning-db [--models nano-dit-random,small-dit]

Tuned = ``banana compile --backend host --tuning-db DB`` (records from ``banana tune``; tasks
without records keep the default rules), untuned = the same build without the database,
onnxruntime with all graph optimisations and all cores, PyTorch eager under inference_mode with
all cores. Engines are timed round-robin (one run each per round) so machine load hits them alike;
each figure is the median over rounds. Each engine lives in its own process (as it would in an
app): in one process the thread pools of onnxruntime, TVM and PyTorch keep spinning after their
own runs and slowed each other (small DiT: banana 52 -> 93 ms and onnxruntime 64 -> 129 ms when
interleaved in one process); the parent only sends "run" and collects the time the child measured.
Even across processes a pool spins on after its run (onnxruntime's for longer than 10 ms: banana
99 ms right after it, 53 ms after 200 ms of quiet), so each round gives every engine a block: a
pause of BLOCK_SETTLE_S, BLOCK_WARMUP untimed runs, then BLOCK_RUNS timed runs back to back.
Ratios are latency ratios (< 1: banana tuned is faster).
Ends with ``RESULT {"tuned_over_ort": ..., "tuned_over_untuned": ..., "tuned_over_torch": ...}``
for the first model, and the same keys per model under ``"models"``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _banana_runner(model: str, out: Path, tuning_db: Path | None) -> tuple[Callable[[], None], dict]:
    import tvm

    from banana.compiler.artifact import Artifact
    from banana.compiler.pipeline import compile_model
    from banana.compiler.zoo import example_inputs
    from banana.targets.host import host_vm

    result = compile_model(f"zoo:{model}", backend="host", out=out, tuning_db=tuning_db)
    artifact = Artifact.open(out)
    # every core, as onnxruntime and torch get (TVM alone would halve x86 vCPUs)
    vm = host_vm(tvm.runtime.load_module(str(artifact.path("model.so"))))
    inputs = example_inputs(model)
    args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[spec["name"]])) for spec in artifact.manifest["inputs"]]
    args += [tvm.runtime.tensor(w) for w in artifact.load_weights()]
    vm.set_input("main", *args)
    info = result.manifest.get("tuning", {})
    return (lambda: vm.invoke_stateful("main")), info


def _ort_runner(model: str) -> Callable[[], None]:
    import onnxruntime as ort

    from banana.compiler.pipeline import resolve_model
    from banana.compiler.zoo import example_inputs

    path, _ = resolve_model(f"zoo:{model}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in example_inputs(model).items() if k in names}
    return lambda: session.run(None, feed)


def _torch_runner(model: str) -> Callable[[], None]:
    import torch

    from banana.compiler.zoo import build_reference, example_inputs

    torch.set_num_threads(os.cpu_count() or 1)
    module = build_reference(model)
    inputs = [torch.from_numpy(v) for v in example_inputs(model).values()]

    def run() -> None:
        with torch.inference_mode():
            module(*inputs)

    return run


#: per round and engine: quiet before its block, and timed runs in the block (see the module docstring)
BLOCK_SETTLE_S = 0.3
BLOCK_RUNS = 6
#: untimed runs before a block: onnxruntime needs a few after a pause (nano DiT: 2-3.5 ms first, ~1.1 ms from the 5th)
BLOCK_WARMUP = 3


class EngineProcess:
    """An engine built and run in a child process; calling it runs it once and returns the seconds
    the child measured around the run alone (no pipe latency in the sample)."""

    def __init__(self, kind: str, *args: object) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_engine, args=(child, kind, args), daemon=True)
        self._proc.start()
        status, payload = self._conn.recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"{kind} engine failed to start: {payload}")
        self.info: dict = payload

    def __call__(self) -> float:
        self._conn.send("run")
        return float(self._conn.recv())

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send("stop")
            self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()


def _serve_engine(conn: Any, kind: str, args: tuple) -> None:
    try:
        if kind == "banana":
            fn, info = _banana_runner(*args)  # type: ignore[arg-type]
        else:
            fn, info = {"ort": _ort_runner, "torch": _torch_runner}[kind](*args), {}  # type: ignore[operator]
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", dict(info)))
    while conn.recv() == "run":
        t0 = time.perf_counter()
        fn()
        conn.send(time.perf_counter() - t0)


def time_round_robin(engines: dict[str, Callable[[], object]], rounds: int, budget_s: float,
                     settle_s: float = 0.01, block: int = 1) -> dict[str, float]:
    """Median ms per engine, one run each per round. ``settle_s``: a pause after every run, because
    thread pools (onnxruntime's, TVM's, PyTorch's) keep spinning for a while after their work and
    would otherwise slow down whichever engine runs next (seen: 2-3x on the nano DiT). An engine
    that returns a float (an :class:`EngineProcess`) reports its own time; others are timed here.
    ``block > 1``: per round each engine runs BLOCK_WARMUP untimed runs, then ``block`` timed runs back
    to back -- its own thread pool warm and every other engine's asleep (``settle_s`` long enough),
    the way it runs in an app."""
    for fn in engines.values():  # warm up (first-call allocation, thread pools)
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in engines}
    start = time.perf_counter()
    for _ in range(rounds):
        for name, fn in engines.items():
            time.sleep(settle_s)
            if block > 1:
                for _ in range(BLOCK_WARMUP):
                    fn()
            for _ in range(block):
                t0 = time.perf_counter()
                measured = fn()
                elapsed = time.perf_counter() - t0
                samples[name].append(measured if isinstance(measured, float) else elapsed)
        if time.perf_counter() - start > budget_s:
            break
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuning-db", type=Path, required=True)
    parser.add_argument("--models", default="nano-dit-random,small-dit")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--budget-s", type=float, default=60.0, help="max timing seconds per model")
    args = parser.parse_args()
    per_model = {}
    with tempfile.TemporaryDirectory(prefix="banana-bench-") as tmp:
        for model in args.models.split(","):
            engines = {"tuned": EngineProcess("banana", model, Path(tmp) / f"{model}-tuned", args.tuning_db),
                       "untuned": EngineProcess("banana", model, Path(tmp) / f"{model}-untuned", None),
                       "ort": EngineProcess("ort", model), "torch": EngineProcess("torch", model)}
            info = engines["tuned"].info
            try:
                ms = time_round_robin(engines, args.rounds, args.budget_s, settle_s=BLOCK_SETTLE_S, block=BLOCK_RUNS)
            finally:
                for engine in engines.values():
                    engine.close()
            ratios = {f"tuned_over_{k}": round(ms["tuned"] / ms[k], 4) for k in ("ort", "untuned", "torch")}
            per_model[model] = {**{f"{k}_ms": round(v, 4) for k, v in ms.items()}, **ratios,
                                "tuned_tasks": len(info.get("tuned_tasks", [])),
                                "untuned_tasks": len(info.get("untuned_tasks", []))}
            print(f"{model}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()))
            print(f"  tuned/ort {ratios['tuned_over_ort']:.3f}x  tuned/untuned {ratios['tuned_over_untuned']:.3f}x  "
                  f"tuned/torch {ratios['tuned_over_torch']:.3f}x  ({per_model[model]['tuned_tasks']} tasks tuned, "
                  f"{per_model[model]['untuned_tasks']} on default rules; medians, shared 2-core host: noisy)")
    first = per_model[args.models.split(",")[0]]
    result = {k: first[k] for k in ("tuned_over_ort", "tuned_over_untuned", "tuned_over_torch")}
    result["models"] = per_model
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
