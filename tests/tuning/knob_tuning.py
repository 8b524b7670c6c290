"""The knob-search round trip both kernel kinds' tests share (attention, fp32 GEMM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from banana.tuning import knobs as knobs_mod
from banana.tuning.knobs import KNOBS_FILE


def tune_rejects_one_and_resumes(model: Path, db: Path, wrong: list[Any],
                                 monkeypatch: pytest.MonkeyPatch) -> tuple[Any, dict[str, Any], Path]:
    """``banana tune``'s knob search on ``model``'s one kernel, whose first non-default candidate the
    caller made wrong (appending it to ``wrong`` when built): 4 candidates measured, that one rejected
    with a reason and never chosen; a rerun measures nothing. Returns (report, stored entry, store path)."""
    from banana.tuning.tune import tune_model

    report = tune_model(model, backend="host", trials=4, db_root=db, runner="local")
    (kernel,) = report.knobs
    assert kernel.measured_now == 4 and kernel.rejected == 1 and wrong
    assert kernel.default_ms is not None and kernel.best_ms is not None and kernel.best_ms <= kernel.default_ms
    store_path = next(db.glob(f"*/host/{KNOBS_FILE}"))
    (entry,) = json.loads(store_path.read_text())["kernels"].values()
    rejected = [m for m in entry["measured"] if not m["ok"]]
    assert [m["knobs"] for m in rejected] == [wrong[0].to_json()] and "error" in rejected[0]["reason"]
    assert entry["best"] != wrong[0].to_json()

    timed: list[Any] = []
    monkeypatch.setattr(knobs_mod, "_time", lambda *a: timed.append(a) or (1.0, ""))
    again = tune_model(model, backend="host", trials=4, db_root=db, runner="local")
    assert again.knobs[0].measured_now == 0 and not timed  # resumed: nothing re-measured
    return kernel, entry, store_path
