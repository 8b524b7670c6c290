"""Validate the ``predict`` runner's cost model where we can measure: this host.

    .venv/bin/python benchmarks/predict_runner.py [--model zoo:nano-dit-random --model zoo:nano-unet]
                                                  [--tasks 4] [--per-task 12]

Extracts each model's tuning tasks for the host target exactly as ``banana tune --backend host``
does (after the LLVM pipeline's pre-schedule passes: banana's GEMM kernels are already scheduled
and not tasks), and takes the ``--tasks`` largest (total FLOPs, the order ``banana tune`` spends
its budget in) whose design space holds at least two distinct candidates: an elementwise task's
only sampled decision (the unroll step) leaves its loop nest unchanged, so it has one candidate
and nothing to rank; such tasks are listed and skipped. From each task it samples ``--per-task``
real MetaSchedule candidates (the sketches of ``post-order-apply`` with freshly sampled decisions
and the postprocessors applied: the same candidates the evolutionary search starts from), builds
each for this host, measures it (TVM's time evaluator: minimum of 3 interleaved rounds x 5
repeats of >= 10 ms) and predicts its time with the cost model and the HOST's parameters
(banana.targets.host.host_soc: cores, clock, SIMD width, measured DRAM bandwidth). Prints
predicted and measured microseconds side by side per task, Spearman's rank correlation pooled
over all candidates and within each task (the ranking MetaSchedule uses: it compares candidates
of one task), per model and overall, the machine's load average while measuring, and ends with
``RESULT {"spearman": ..., "candidates": ..., ...}``.

The default models are one DiT (layer norms, the patch convolution, a mean) and one UNet (3x3
convolutions): with banana's GEMM kernels the DiT alone no longer has 50 rankable candidates.

The host's 2 cores are shared with other engineers' jobs: a parallel loop then waits for its
slowest, descheduled thread and its time says more about the neighbours than about the schedule.
By default candidates therefore run on one TVM thread (``--threads 1``) and the model is given one
core (the fork/join term drops out; parallel loops still cost their serial work). ``--threads 2``
measures and predicts with both cores.

Seeds are fixed (``--seed``): the candidates are reproducible; their measured times are not
exactly (the host is shared), hence repeats, medians and the load figure. ``--save FILE`` keeps
the measured candidates (scheduled modules as TVM JSON) and ``--load FILE`` re-predicts them
without measuring again (for working on the model; the RESULT then says ``"remeasured": false``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

#: one DiT and one UNet: their rankable tasks are layer norms, a mean and 3x3 / patch convolutions
DEFAULT_MODELS = ["zoo:nano-dit-random", "zoo:nano-unet"]


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho with average ranks for ties (numpy only)."""
    def ranks(x: list[float]) -> np.ndarray:
        values = np.asarray(x, dtype=np.float64)
        order = values.argsort(kind="mergesort")
        r = np.empty(len(values))
        r[order] = np.arange(len(values), dtype=np.float64)
        for v in np.unique(values):
            tie = values == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def sample_candidates(task_mod, target, count: int, seed: int) -> list:
    """``count`` distinct postprocessed candidates of one task's design space (seeded)."""
    import tvm_ffi
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.schedule import Trace

    context = ms.TuneContext(mod=task_mod, target=target, space_generator="post-order-apply", task_name="t",
                             rand_state=seed, num_threads=1).clone()
    spaces = context.generate_design_space()
    postprocs = context.space_generator.postprocs
    rng = np.random.default_rng(seed)
    found, seen = [], set()
    for attempt in range(count * 6):
        space = spaces[attempt % len(spaces)]
        sch = s_tir.Schedule(task_mod, seed=int(rng.integers(1, 2**30)))
        try:
            Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
        except Exception:  # noqa: BLE001 - a sampled decision may be invalid for this sketch
            continue
        if not all(p.apply(sch) for p in postprocs):
            continue
        key = tvm_ffi.structural_hash(sch.mod)
        if key in seen:
            continue
        seen.add(key)
        found.append(sch.mod)
        if len(found) == count:
            break
    return found


def measure(mods: list, target, task_mod, rounds: int = 3, repeat: int = 5) -> list[float | None]:
    """Seconds of one call of each scheduled module built for this host (None: does not build).

    The host is shared: other jobs only ever make a run slower, so each candidate's time is the
    minimum over ``rounds`` x ``repeat`` timings (>= 10 ms each), and the rounds interleave the
    candidates so a burst of outside load does not land on one candidate only.
    """
    import tvm

    from banana.tuning.check import _random_buffers

    device = tvm.cpu()
    args = [tvm.runtime.tensor(a, device) for a in _random_buffers(task_mod["main"], 0)]
    timers: list = []
    for mod in mods:
        try:
            timers.append(tvm.compile(mod, target=target).mod.time_evaluator("main", device, number=1,
                                                                             repeat=repeat, min_repeat_ms=10))
        except Exception as exc:  # noqa: BLE001 - a candidate that does not build is skipped
            print(f"  skipped a candidate: {str(exc).splitlines()[0][:100]}")
            timers.append(None)
    best: list[float | None] = [None if t is None else float("inf") for t in timers]
    for _ in range(rounds):
        for index, timer in enumerate(timers):
            if timer is not None:
                best[index] = min(best[index], float(np.min(timer(*args).results)))
    return best


def collect(models: list[str], tasks: int, per_task: int, seed: int) -> list[dict]:
    """Measured candidates of the ``tasks`` largest rankable tasks of each model (see the module doc)."""
    import tvm

    from banana.compiler.frontend.importer import import_onnx
    from banana.compiler.pipeline import resolve_model
    from banana.targets.host import host_target
    from banana.tuning.tasks import extract_tune_tasks
    from banana.tuning.tune import _as_built, lean_tensor_intrinsics

    target = host_target()
    lean_tensor_intrinsics(target)
    tvm_target = tvm.target.Target(target)
    rows = []
    for model in models:
        path, _ = resolve_model(model)
        imported = import_onnx(path, None)
        extracted = extract_tune_tasks(_as_built(imported.mod, "host", target), target)
        taken = 0
        for index, task in enumerate(t for t in extracted if t.flops > 0):
            if taken == tasks:
                break
            mods = sample_candidates(task.mod, tvm_target, per_task, seed * 1000 + index)
            if len(mods) < 2:
                # e.g. an elementwise task: its only sampled decision (the unroll step) does not
                # change its loop nest, so the runner has nothing to rank there
                print(f"  {model}: {task.name} has {len(mods)} distinct candidate(s): nothing to rank, skipped")
                continue
            taken += 1
            measured = 0
            for mod, seconds in zip(mods, measure(mods, tvm_target, task.mod), strict=True):
                if seconds is not None:
                    rows.append({"model": model, "task": f"{model}:{task.name}", "measured_s": seconds,
                                 "mod": tvm.ir.save_json(mod)})
                    measured += 1
            print(f"  {model}: measured {measured} candidates of {task.name}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", dest="models",
                        help=f"a zoo:NAME or ONNX path; repeat for several (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--tasks", type=int, default=4, help="rankable tasks per model, largest total FLOPs first")
    parser.add_argument("--per-task", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="TVM runtime threads while measuring, and the cores the model is given (default 1: "
                             "the host's cores are shared, and a parallel loop waits for its slowest thread)")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--load", type=Path)
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="banana-predict-bench-")
    try:
        run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, scratch: str) -> None:
    os.environ["TMPDIR"] = scratch  # TVM leaves tvm-*.o in $TMPDIR
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    tempfile.tempdir = scratch

    import tvm

    from banana.targets.host import host_soc
    from banana.tuning.predict import CoreModel, predict_seconds

    machine = dataclasses.replace(CoreModel.from_soc(host_soc(), "host"), cores=args.threads)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    if args.load:
        rows = json.loads(args.load.read_text())  # measured earlier: pass the --threads they were measured with
    else:
        rows = collect(args.models or DEFAULT_MODELS, args.tasks, args.per_task, args.seed)
        if args.save:
            args.save.write_text(json.dumps(rows))
    load_after = os.getloadavg()[0]
    by_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
    model_of: dict[str, str] = {}
    for row in rows:
        by_task[row["task"]].append((predict_seconds(tvm.ir.load_json(row["mod"]), machine), row["measured_s"]))
        model_of[row["task"]] = row.get("model", "?")
    pooled, mean_within, within = agreement(by_task)
    print(f"host machine model: {machine}")
    print("per task: rho, then predicted/measured microseconds sorted by measured time")
    for name, values in by_task.items():
        side = " ".join(f"{p * 1e6:.0f}/{m * 1e6:.0f}" for p, m in sorted(values, key=lambda x: x[1]))
        print(f"  {within[name]:+.2f} {name[:64]:64} {side}")
    per_model = {}
    for model in dict.fromkeys(model_of.values()):
        subset = {k: v for k, v in by_task.items() if model_of[k] == model}
        model_pooled, model_within, _ = agreement(subset)
        per_model[model] = {"spearman": round(model_pooled, 4), "spearman_within_task_mean": round(model_within, 4),
                            "candidates": sum(len(v) for v in subset.values()), "tasks": len(subset)}
        print(f"  {model}: pooled {model_pooled:.3f}, mean within-task {model_within:.3f} over "
              f"{per_model[model]['candidates']} candidates of {len(subset)} tasks")
    candidates = sum(len(v) for v in by_task.values())
    print(f"{candidates} candidates of {len(by_task)} tasks, measured with load average "
          f"{load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} cores ({time.perf_counter() - started:.0f} s)")
    print(f"Spearman predicted vs measured: pooled {pooled:.3f}, mean within-task {mean_within:.3f}")
    print("RESULT " + json.dumps({"spearman": round(pooled, 4), "candidates": candidates, "tasks": len(by_task),
                                  "spearman_within_task_mean": round(mean_within, 4), "models": per_model,
                                  "load_average": [round(load_before, 2), round(load_after, 2)],
                                  "threads": args.threads,
                                  "remeasured": args.load is None}))


def agreement(by_task: dict[str, list[tuple[float, float]]]) -> tuple[float, float, dict[str, float]]:
    """Spearman pooled over all (predicted, measured) pairs, its mean within tasks, and per task."""
    pairs = [p for v in by_task.values() for p in v]
    pooled = spearman([p for p, _ in pairs], [m for _, m in pairs])
    within = {k: spearman([p for p, _ in v], [m for _, m in v]) for k, v in by_task.items()}
    valid = [w for w in within.values() if w == w]
    return pooled, statistics.mean(valid) if valid else float("nan"), within


if __name__ == "__main__":
    main()
