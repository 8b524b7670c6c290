"""Tuning progress: trials done, best latency so far and ETA reach the progress callback and the CLI bar."""

from __future__ import annotations

import re
import time

import pytest
import tvm

from banana.compiler.cli import _TuneBar, main
from banana.tuning.check import CandidateChecker
from banana.tuning.tasks import TuneTask
from banana.tuning.tune import TuneProgress, _Session
from tests.conftest import make_mlp_model


def _task(name: str, weight: int) -> TuneTask:
    return TuneTask(name, tvm.IRModule({}), weight, 1e6)


def test_session_progress_counts_trials_best_latency_and_eta() -> None:
    session = _Session(CandidateChecker(), None, [(_task("a", 2), 10), (_task("b", 1), 6)], None)
    session.started = time.perf_counter() - 8.0  # 8 s spent on the 4 trials attempted in this session
    session.done_before, session.run, session.rejected = 4, 3, 1
    session.best_s = {"a": 1e-3, "b": 0.5e-3}
    p = session.progress()
    assert (p.trials_done, p.trials_total, p.rejected) == (8, 16, 1)
    assert p.best_latency_ms == pytest.approx(2 * 1.0 + 1 * 0.5)  # calls x best time, summed over tasks
    assert p.eta_s == pytest.approx(8.0 / 4 * (16 - 8), rel=0.05)  # 2 s per trial x 8 trials left


def test_progress_bar_prints_trials_best_and_eta(capsys) -> None:
    bar = _TuneBar()
    bar(TuneProgress(0, 16, None, 0.0, None, "fused_matmul", 0))
    bar(TuneProgress(8, 16, 2.5, 10.0, 90.0, "fused_matmul", 1))
    bar.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert "0/16 trials" in lines[0] and "ETA ?" in lines[0]
    assert "8/16 trials" in lines[-1] and "best 2.500 ms" in lines[-1] and "ETA 1.5 min" in lines[-1]
    assert "rejected 1" in lines[-1]


@pytest.mark.slow  # a real predict-runner tuning run through the CLI: about a minute on the shared host
def test_cli_tune_shows_progress_with_best_latency_and_eta(tmp_path, capsys) -> None:
    model = make_mlp_model(tmp_path / "m.onnx")
    code = main(["tune", str(model), "--backend", "hexagon", "--soc", "SM8650", "--runner", "predict",
                 "--trials", "8", "--db", str(tmp_path / "db")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    bars = [line for line in captured.err.splitlines() if "trials, best" in line]
    assert bars and re.search(r"\b0/8 trials", bars[0]) and "8/8 trials" in bars[-1]
    assert re.search(r"best \d+\.\d+ ms", bars[-1]) and re.search(r"ETA \d+\.\d+ min", bars[-1])
    assert "trials/min" in captured.out
