"""Validate the ``predict`` runner's cost model where we can measure: this host.

    .venv/bin/python benchmarks/predict_runner.py --tuning-db tuning-db

Takes the host records of a ``banana tune --backend host --runner local`` database (each one a
candidate schedule with its measured time), predicts each candidate's time with the host's
parameters (banana.targets.host.host_soc: cores, clock, SIMD width, measured DRAM bandwidth) and
reports Spearman's rank correlation between predicted and measured times: pooled over all
candidates, and the mean of the per-task correlations (the harder, within-task ranking that
tuning actually relies on). Ends with ``RESULT {"spearman": ..., "candidates": ..., ...}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuning-db", type=Path, required=True)
    parser.add_argument("--min-per-task", type=int, default=5)
    parser.add_argument("--dump", action="store_true", help="print predicted/measured us per task")
    args = parser.parse_args()

    import tvm_ffi

    from banana.targets.host import host_soc
    from banana.tuning.check import scheduled_module
    from banana.tuning.database import TuningDatabase
    from banana.tuning.predict import CoreModel, predict_seconds

    machine = CoreModel.from_soc(host_soc(), "host")
    with tempfile.TemporaryDirectory(prefix="banana-predict-") as tmp:  # a copy: a tuner may be appending
        shutil.copytree(args.tuning_db / "host" / "host", Path(tmp) / "host" / "host")
        db = TuningDatabase.open(tmp, "host", "host", create=False)
        by_task: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for record in db.ms.get_all_tuning_records():
            if not record.run_secs:
                continue
            measured = statistics.mean(float(s) for s in record.run_secs)
            mod = scheduled_module(record.workload.mod, record.trace)
            by_task[str(tvm_ffi.structural_hash(record.workload.mod))].append((predict_seconds(mod, machine), measured))
    tasks = {k: v for k, v in by_task.items() if len(v) >= args.min_per_task}
    pairs = [p for v in tasks.values() for p in v]
    pooled = spearman([p for p, _ in pairs], [m for _, m in pairs])
    within = [spearman([p for p, _ in v], [m for _, m in v]) for v in tasks.values()]
    within = [w for w in within if w == w]
    mean_within = statistics.mean(within) if within else float("nan")
    if args.dump:
        for key, v in tasks.items():
            print(key[:8], " ".join(f"{p * 1e6:.1f}/{m * 1e6:.1f}" for p, m in sorted(v, key=lambda x: x[1])))
    print(f"host machine model: {machine}")
    print(f"{len(pairs)} candidates of {len(tasks)} tasks (>= {args.min_per_task} records each)")
    print(f"Spearman predicted vs measured: pooled {pooled:.3f}, mean within-task {mean_within:.3f} "
          f"(per task: {', '.join(f'{w:.2f}' for w in within)})")
    print("RESULT " + json.dumps({"spearman": round(pooled, 4), "candidates": len(pairs), "tasks": len(tasks),
                                  "spearman_within_task_mean": round(mean_within, 4)}))


if __name__ == "__main__":
    main()
