"""Tuning survives kill -9: finished trials stay in the database, a rerun resumes, builds apply it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from banana.tuning.database import RECORDS, TuningDatabase
from banana.tuning.tune import tune_model
from tests.conftest import make_mlp_model

TRIALS = 8


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.is_file() else []


@pytest.mark.slow  # ~60 s of CPU; 4 min wall on the shared 2-core host
def test_kill_9_keeps_finished_trials_rerun_resumes_and_compile_applies(tmp_path) -> None:
    model = make_mlp_model(tmp_path / "mlp.onnx")
    db_root = tmp_path / "db"
    records = db_root / "host" / "host" / RECORDS
    code = ("from banana.tuning.tune import tune_model; "
            f"tune_model({str(model)!r}, backend='host', trials={TRIALS}, db_root={str(db_root)!r}, "
            "trials_per_iter=2)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(_lines(records)) < 1 and proc.poll() is None:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the tuner and its builder/runner workers
        proc.wait(timeout=30)
    before = _lines(records)
    assert 1 <= len(before) < TRIALS, "the tuner must be killed mid-run with some trials finished"

    db = TuningDatabase.open(db_root, "host", "host", create=False)  # readable after kill -9
    whole = [line for line in before if line.endswith(b"\n")]
    assert len(db.ms.get_all_tuning_records()) == len(whole)

    report = tune_model(model, backend="host", trials=TRIALS, db_root=db_root, trials_per_iter=4)
    after = _lines(records)
    assert after[: len(whole)] == whole, "a finished trial was lost or rewritten"
    assert report.trials_run + report.rejected + report.failed <= TRIALS - len(whole), "finished trials re-run"
    assert sum(t.trials_in_db for t in report.tasks) == len(after)

    from banana.compiler.pipeline import compile_model
    from banana.targets.backends.host import run_in_process

    result = compile_model(model, backend="host", out=tmp_path / "out", tuning_db=db_root)
    tuning = result.manifest["tuning"]
    assert tuning["consulted"] and tuning["tuned_tasks"], tuning
    from banana.compiler.artifact import Artifact

    x = np.random.default_rng(0).standard_normal((2, 8, 16)).astype(np.float32)
    (got,) = run_in_process(Artifact.open(result.artifact_dir), [x])
    (expected,) = ort.InferenceSession(str(model)).run(None, {"x": x})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
