"""The sweep's building blocks without the pipeline: space, duplicate-free sampler, Pareto, cache, orphans."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from banana.compiler.errors import BadConfigError
from banana.tuning.sweep import _fail_orphans
from banana.tuning.sweep_pareto import dominates, pareto_front
from banana.tuning.sweep_space import SweepSpace, UniqueSampler, load_space_text
from banana.tuning.sweep_trial import cached

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(**dims: tuple) -> SweepSpace:
    base = {"precision": ("fp32",), "fuse": (True,), "steps": (2,), "tuning_trials": (0,), "dqat_iterations": (0,),
            "calibration_seeds": (64,)}
    return SweepSpace({**base, **dims})


def test_float_model_ignores_quantizer_settings_in_the_grid() -> None:
    space = _space(precision=("fp32", "w8a8"), dqat_iterations=(0, 300), calibration_seeds=(8, 64))
    grid = space.grid()
    assert len(grid) == 1 + 2 * 2  # fp32 once, w8a8 x 2 iterations x 2 seed counts
    assert space.key(space.canonical({**grid[0], "dqat_iterations": 300})) == space.key(grid[0])


def test_sampler_never_repeats_a_configuration_until_the_grid_is_exhausted() -> None:
    space = _space(fuse=(True, False), steps=(1, 2, 3, 4))  # 8 configurations
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"], sampler=UniqueSampler(space, 0))
    for _ in range(8):
        trial = study.ask(fixed_distributions=space.distributions())
        p = trial.params
        study.tell(trial, [p["steps"] * (1.0 if p["fuse"] else 1.3), 10.0 * p["steps"], 100.0])
    keys = [space.key(t.params) for t in study.trials]
    assert len(set(keys)) == 8
    assert set(keys) == {space.key(p) for p in space.grid()}


def test_plain_tpe_does_repeat_on_this_space() -> None:
    """The control: without UniqueSampler the same space does produce duplicates (so the test above can fail)."""
    space = _space(fuse=(True, False), steps=(1, 2, 3, 4))
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=0, multivariate=True))
    for _ in range(8):
        trial = study.ask(fixed_distributions=space.distributions())
        study.tell(trial, [trial.params["steps"], 1.0, 1.0])
    assert len({space.key(t.params) for t in study.trials}) < 8


def test_pareto_front_of_hand_made_points() -> None:
    # (latency ms, PSNR dB, bytes): #1 dominates #2 (faster, sharper, same size); #3 is smallest; #0 sharpest
    values = [[30.0, 60.0, 400.0], [10.0, 30.0, 400.0], [12.0, 25.0, 400.0], [40.0, 20.0, 100.0]]
    trials = [optuna.trial.create_trial(values=v, params={}, distributions={}) for v in values]
    for i, t in enumerate(trials):
        t.number = i
    assert dominates(values[1], values[2]) and not dominates(values[2], values[1])
    assert not dominates(values[0], values[0])
    assert [t.number for t in pareto_front(trials)] == [1, 0, 3]


def test_space_rejects_what_the_backend_cannot_run() -> None:
    with pytest.raises(BadConfigError, match="cannot run int8/fp16"):
        SweepSpace.build("hexagon", {"precision": ["w8af16"]})
    with pytest.raises(BadConfigError, match="mixed:F"):
        SweepSpace.build("host", {"precision": ["mixed:1.5"]})
    with pytest.raises(BadConfigError, match="field fuse"):
        load_space_text('{"fuse": ["yes"]}')


def test_cache_builds_an_entry_once_under_concurrency(tmp_path: Path) -> None:
    calls: list[int] = []

    def build(out: Path) -> None:
        calls.append(1)
        time.sleep(0.3)
        out.mkdir()
        (out / "value.txt").write_text("42")

    results: list[tuple[Path, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(cached(tmp_path, "k", {"a": 1}, build)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len({p for p, _ in results}) == 1 and sorted(hit for _, hit in results) == [False, True, True, True]
    entry = results[0][0]
    assert (entry / "value.txt").read_text() == "42"
    assert [p.name for p in (tmp_path / "k").iterdir() if not p.name.startswith(".")] == [entry.name]


def test_trials_of_a_dead_worker_become_fail(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(storage=storage, study_name="s", directions=["minimize"] * 3)
    dead, alive = study.ask(), study.ask()
    dead.set_user_attr("worker", "host:111")
    alive.set_user_attr("worker", "host:222")
    assert _fail_orphans(study, {"host:111": -9}) == 1
    by_number = {t.number: t for t in optuna.load_study(study_name="s", storage=storage).trials}
    assert by_number[dead.number].state == TrialState.FAIL
    assert "exited with code -9" in by_number[dead.number].user_attrs["error"]
    assert by_number[alive.number].state == TrialState.RUNNING
