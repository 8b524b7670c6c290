"""A build compiled with a tuning database is reported with its tuned kernels, not the default ones.

The report re-lowers the module to analyse it; it must do so inside the build's tuning context
(``compiler/pipeline.py``), and the records applied twice per compile must list each task once
(``tuning/apply.py``). The reference for "tuned" is the database itself: the tasks the manifest
names as tuned have a record, and their analysed work must differ from the same kernel's work
in an untuned build of the same model (which it equals without the fix).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banana.compiler.pipeline import compile_model
from banana.tuning.tune import tune_model
from tests.conftest import make_mlp_model


def _kernels(artifact: Path) -> dict[str, dict]:
    return json.loads((artifact / "report.json").read_text())["work"]["kernels"]


def _shape(kernel: dict) -> tuple:
    return (kernel["parallel"], kernel["vectorized"], sorted(kernel["ops_by_class"].items()),
            sorted(kernel["stores_by_class"].items()))


@pytest.mark.slow  # tunes (predict runner, no measurement) and compiles twice: ~1 min on the shared host
def test_tuned_build_report_reflects_the_tuned_kernels(tmp_path: Path) -> None:
    model = make_mlp_model(tmp_path / "m.onnx", batch=16)
    db = tmp_path / "db"
    # trials only (no default-schedule records): every tuned task then runs a searched schedule
    tune_model(model, backend="host", trials=8, runner="predict", db_root=db, trials_per_iter=8,
               default_schedules=False)
    tuned = compile_model(model, backend="host", out=tmp_path / "tuned", tuning_db=db)
    compile_model(model, backend="host", out=tmp_path / "plain")

    listed = tuned.manifest["tuning"]
    assert listed["tuned_tasks"], listed
    names = listed["tuned_tasks"] + listed["untuned_tasks"]
    assert len(names) == len(set(names)), f"a task listed twice: {listed}"

    tuned_kernels, plain_kernels = _kernels(tmp_path / "tuned"), _kernels(tmp_path / "plain")
    for task in listed["tuned_tasks"]:
        assert task in tuned_kernels and task in plain_kernels, (task, sorted(tuned_kernels))
        assert _shape(tuned_kernels[task]) != _shape(plain_kernels[task]), (
            f"{task}: the report analysed the default schedule, not the tuned one")
    for task in listed["untuned_tasks"]:
        if task in tuned_kernels and task in plain_kernels:
            assert _shape(tuned_kernels[task]) == _shape(plain_kernels[task]), task
