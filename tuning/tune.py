"""The tune driver: a model's tasks, MetaSchedule per task, verified records, resumable budgets.

Each selected task is tuned by its own MetaSchedule run with budget ``planned - already in the
database``: the plan is a deterministic function of the model and ``--trials`` and records are
appended as they are measured, so rerunning after Ctrl-C or ``kill -9`` resumes where it stopped
(losing only the trials that were in flight). Records pass :class:`CandidateChecker` first.
On ``host``/``cpu`` a share of the budget searches the schedule knobs of banana's own kernels (fused
attention, fp32 GEMM; :mod:`banana.tuning.knobs`), which MetaSchedule cannot schedule.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from banana.compiler.errors import BadConfigError
from banana.tuning.baseline import BASELINE_BACKENDS, commit_baseline
from banana.tuning.check import CandidateChecker, scheduled_module
from banana.tuning.database import TuningDatabase
from banana.tuning.runners import RunnerSpec, check_runner, make_runner, parse_runner
from banana.tuning.tasks import TuneTask, extract_tune_tasks, select_tasks

logger = logging.getLogger(__name__)

TUNABLE_BACKENDS = ("host", "cpu", "adreno", "hexagon")
KNOB_BACKENDS = ("host", "cpu")  # banana.tuning.knobs.KNOB_BACKENDS (not imported: keeps this module light)


@dataclass
class TuneProgress:
    """Emitted after every measured batch; the CLI turns it into a progress bar."""

    trials_done: int
    trials_total: int
    best_latency_ms: float | None  # sum over tuned tasks of calls x best time (tuned part of the model)
    elapsed_s: float
    eta_s: float | None
    task: str
    rejected: int


@dataclass
class TaskReport:
    name: str
    weight: int
    flops: float
    trials_planned: int
    trials_in_db: int
    best_ms: float | None


@dataclass
class TuneReport:
    database_dir: Path
    runner: str
    tasks: list[TaskReport]
    untuned_tasks: list[str]
    trials_run: int
    rejected: int
    failed: int
    elapsed_s: float
    knobs: list[Any] = field(default_factory=list)  # banana.tuning.knobs.KnobReport per attention/GEMM kernel

    @property
    def trials_per_minute(self) -> float:
        return 60.0 * self.trials_run / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class _Session:
    checker: CandidateChecker
    db: TuningDatabase
    plan: list[tuple[TuneTask, int]]
    on_progress: Callable[[TuneProgress], None] | None
    started: float = field(default_factory=time.perf_counter)
    done_before: int = 0
    run: int = 0
    rejected: int = 0
    failed: int = 0
    best_s: dict[str, float] = field(default_factory=dict)
    task: TuneTask | None = None
    workload: Any = None
    target: Any = None
    extra_total: int = 0  # trials spent after the tasks (kernel knobs), shown in the same bar

    @property
    def total(self) -> int:
        return sum(b for _, b in self.plan) + self.extra_total

    def progress(self) -> TuneProgress:
        elapsed = time.perf_counter() - self.started
        done = self.done_before + self.run + self.rejected + self.failed
        weights = {t.name: t.weight for t, _ in self.plan}
        best = sum(weights[n] * s for n, s in self.best_s.items()) * 1e3 if self.best_s else None
        attempted = self.run + self.rejected + self.failed
        eta = elapsed / attempted * max(0, self.total - done) if attempted else None
        return TuneProgress(min(done, self.total), self.total, best, elapsed, eta,
                            self.task.name if self.task else "", self.rejected)


@derived_object
class VerifiedCommit(ms.measure_callback.PyMeasureCallback):
    """Replaces MetaSchedule's AddToDatabase: only candidates that match the reference are stored."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any, builder_results: Any,
              runner_results: Any) -> None:
        s = self.session
        for candidate, built, ran in zip(measure_candidates, builder_results, runner_results, strict=True):
            if built.error_msg is not None or ran.error_msg is not None or not ran.run_secs:
                s.failed += 1
                message = (built.error_msg or ran.error_msg or "no run time").strip().splitlines()
                logger.debug("task %s: candidate failed: %s", s.task.name, message[-1] if message else "")
                continue
            # the full trace, postprocessing included (parallel/vectorize/unroll are realised there);
            # checked as a build will replay it, not as the search happened to hold it
            trace = candidate.sch.trace
            result = s.checker.check(s.workload.mod, scheduled_module(s.workload.mod, trace))
            if not result.ok:
                s.rejected += 1
                logger.warning("task %s: rejected a wrong candidate (%s)", s.task.name, result.reason)
                continue
            run_secs = [float(x) for x in ran.run_secs]
            record = ms.database.TuningRecord(trace, s.workload, run_secs, s.target, candidate.args_info)
            s.db.ms.commit_tuning_record(record)
            s.run += 1
            mean = sum(run_secs) / len(run_secs)
            if mean < s.best_s.get(s.task.name, math.inf):
                s.best_s[s.task.name] = mean
        if s.on_progress:
            s.on_progress(s.progress())


def lean_tensor_intrinsics(target: dict[str, Any] | None = None) -> None:
    """Stop ``TuneContext`` from registering every tensor intrinsic (CUDA, ROCm, ...) on first use.

    That import parses hundreds of TVMScript functions, each calling ``inspect.stack()``, whose
    cost grows with ``sys.modules``: measured here 200-490 s once torch/onnx are loaded. banana's
    fp32 tuning uses no tensor intrinsic; kernels that tensorize import the submodule they need
    (e.g. ``tvm.s_tir.tensor_intrin.arm_cpu``), which still works under the empty package.
    """
    import importlib.util
    import sys

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            return
        package = importlib.util.module_from_spec(spec)  # the package object, its __init__ not executed
        sys.modules[name] = package
        import tvm.s_tir

        tvm.s_tir.tensor_intrin = package  # type: ignore[attr-defined]
    if target and "aarch64" in str(target.get("mtriple", "")):
        # MetaSchedule's ARM rules name the sdot/udot intrinsics in their design space
        importlib.import_module(f"{name}.arm_cpu")


def _cost_model(cores: int) -> Any:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        logger.warning("xgboost is not installed: MetaSchedule searches with a random cost model")
        return ms.CostModel.create("random")
    return ms.CostModel.create("xgb", num_tuning_cores=cores)


def _strategy() -> Any:
    """A smaller evolutionary search than the default: 2 cores, budgets of tens of trials per task."""
    return ms.search_strategy.EvolutionarySearch(population_size=256, init_measured_ratio=0.2,
                                                 genetic_num_iters=2)


def tune_imported(
    imported: Any,
    *,
    backend: str,
    soc: Any,
    target: dict[str, Any],
    trials: int,
    runner: str | RunnerSpec = "local",
    db_root: Path | str,
    seed: int = 0,
    on_progress: Callable[[TuneProgress], None] | None = None,
    checker: CandidateChecker | None = None,
    builder: Any = None,
    ms_runner: Any = None,
    trials_per_iter: int = 16,
    default_schedules: bool = True,
    knob_kernels: list[Any] | None = None,
) -> TuneReport:
    """Tune an imported model's tasks for ``target``; see :func:`tune_model`.

    ``knob_kernels`` (``banana.tuning.knobs.KnobKernel``): banana's own kernels, whose knobs get
    :func:`_knob_budget` of ``trials`` (searched after the tasks); the tasks get the rest.

    ``default_schedules``: measure each task's default schedule too and let it compete with the
    trials in builds (:mod:`banana.tuning.baseline`); off only to study the search on its own."""
    if backend not in TUNABLE_BACKENDS:
        raise BadConfigError(f"--backend {backend}: tuning supports {', '.join(TUNABLE_BACKENDS)} for now")
    if trials < 0:
        raise BadConfigError(f"--trials {trials}: must be >= 0")
    spec = parse_runner(runner) if isinstance(runner, str) else runner
    lean_tensor_intrinsics(target)
    db = TuningDatabase.open(db_root, soc.id, backend, target)
    tasks = extract_tune_tasks(imported.mod, target)
    knob_trials = _knob_budget(trials, knob_kernels or [], has_tasks=bool(select_tasks(tasks, trials)))
    plan = select_tasks(tasks, trials - knob_trials)
    planned = {t.name for t, _ in plan}
    session = _Session(checker or CandidateChecker(seed=seed, target=target), db, plan, on_progress,
                       extra_total=knob_trials)
    tvm_target = tvm.target.Target(target)
    session.target = tvm_target
    cores = int(target.get("num-cores", os.cpu_count() or 1))
    if plan:
        builder = builder or _builder_for(spec, soc, backend)
        ms_runner = ms_runner or make_runner(spec, backend, soc=soc, target=target)
        cost_model = _cost_model(cores)
    reports: list[TaskReport] = []
    pending: list[tuple[TuneTask, int, int]] = []
    for task, budget in plan:
        have = len(db.records_for(task.mod))
        session.done_before += min(have, budget)
        pending.append((task, budget, have))
        best = db.best_seconds(task.mod)
        if best is not None:
            session.best_s[task.name] = best
    session_meta = {"started_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "model_sha256": getattr(imported, "sha256", ""), "runner": str(spec),
                    "trials_requested": trials}
    db.meta["sessions"].append(session_meta)
    db.save_meta()
    if on_progress:
        on_progress(session.progress())
    try:
        for index, (task, budget, have) in enumerate(pending):
            remaining = budget - have
            if remaining <= 0:
                continue
            session.task = task
            if default_schedules and backend in BASELINE_BACKENDS:  # the build's default schedule competes as a record
                baseline_s = commit_baseline(db, task, tvm_target, builder, ms_runner)
                if baseline_s is not None:
                    session.best_s[task.name] = min(session.best_s.get(task.name, baseline_s), baseline_s)
            session.workload = db.ms.commit_workload(task.mod)
            (task_logger,) = _task_loggers(str(db.directory), task.name)
            context = ms.TuneContext(mod=task.mod, target=tvm_target, space_generator="post-order-apply",
                                     search_strategy=_strategy(), task_name=task.name, logger=task_logger,
                                     rand_state=seed + index, num_threads=cores).clone()
            callbacks = [VerifiedCommit(session), ms.measure_callback.RemoveBuildArtifact(),
                         ms.measure_callback.UpdateCostModel()]
            ms.tune.tune_tasks(tasks=[context], task_weights=[float(task.weight)], work_dir=str(db.directory),
                               max_trials_global=remaining, max_trials_per_task=remaining,
                               num_trials_per_iter=min(trials_per_iter, remaining), builder=builder,
                               runner=ms_runner, database=db.ms, cost_model=cost_model,
                               measure_callbacks=callbacks, task_scheduler="round-robin")
    finally:
        session_meta.update(trials_run=session.run, rejected=session.rejected,
                            elapsed_s=round(time.perf_counter() - session.started, 3))
        db.save_meta()
    for task, budget in plan:
        best = db.best_seconds(task.mod)
        reports.append(TaskReport(task.name, task.weight, task.flops, budget, len(db.records_for(task.mod)),
                                  None if best is None else best * 1e3))
    report = TuneReport(db.directory, str(spec), reports, [t.name for t in tasks if t.name not in planned],
                        session.run, session.rejected, session.failed, time.perf_counter() - session.started)
    if knob_trials:
        report.knobs = _tune_knobs(knob_kernels or [], backend=backend, soc=soc, target=target, trials=knob_trials,
                                   spec=spec, db_root=db_root, seed=seed, report=report, on_progress=on_progress)
    return report


def _task_loggers(work_dir: str, task_name: str) -> list[Any]:
    """MetaSchedule's per-task file loggers, tolerating handlers without a name on its logger.

    ``create_loggers`` rebuilds a ``logging.config`` dict from the names of the handlers already
    attached to ``tvm.s_tir.meta_schedule`` and fails on an unnamed one (``None.format``), which is
    what a second tuning run in one process (e.g. a test session) finds there. Unnamed handlers are
    detached for the call and put back after.
    """
    root = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in root.handlers if h.get_name() is None]
    for handler in unnamed:
        root.removeHandler(handler)
    try:
        return ms.logging.get_loggers_from_work_dir(work_dir, [task_name])
    finally:
        for handler in unnamed:
            root.addHandler(handler)


def _builder_for(spec: RunnerSpec, soc: Any, backend: str) -> Any:
    if spec.kind == "predict":
        from banana.tuning.predict import PredictBuilder, cost_function

        return PredictBuilder(cost_function(soc, backend))
    from banana.tuning.builders import local_builder

    return local_builder()


def _as_built(mod: Any, backend: str, target: dict[str, Any]) -> Any:
    """The module exactly as the pipeline hands it to the backend (after its fuse stage, if any),
    so tasks tuned here are structurally equal to those the build looks up."""
    return _fused(mod, backend, target)[0]


def _fused(mod: Any, backend: str, target: dict[str, Any]) -> tuple[Any, list[Any]]:
    """(module after the fuse stage, its attention site records) with default knobs."""
    try:
        from banana.compiler.passes.stage import fuse_stage
    except ImportError:
        return mod, []
    fusion = fuse_stage(mod, backend, target)
    return fusion.mod, list(fusion.sites)


def _knob_kernels(mod: Any, sites: list[Any], target: dict[str, Any]) -> list[Any]:
    """banana's kernels with searchable knobs in ``mod`` (after the fuse stage): the distinct fused
    attention kernels, then the distinct outer-product GEMM kernels (``banana.tuning.knobs.KnobKernel``)."""
    from banana.tuning.gemm_knobs import gemm_kernels, gemm_specs
    from banana.tuning.knobs import attention_kernels, distinct_specs

    cores = int(target.get("num-cores", 1))  # as the fuse stage counts them: same default knobs
    return attention_kernels(distinct_specs(sites), cores) + gemm_kernels(gemm_specs(mod, target), target)


def _knob_budget(trials: int, kernels: list[Any], *, has_tasks: bool) -> int:
    """``knobs.knob_budget`` over ``kernels`` (each capped at its candidate list); when the model also
    has MetaSchedule tasks worth tuning they keep at least half of ``trials`` (a small ``--trials`` on
    a model with a few GEMMs must not go to the kernels' knob floors alone)."""
    from banana.tuning.knobs import MAX_CANDIDATES, knob_budget

    if not kernels:
        return 0
    budget = knob_budget(trials, len(kernels), [len(k.candidates(MAX_CANDIDATES)) for k in kernels])
    return min(budget, trials // 2) if has_tasks else budget


def _tune_knobs(kernels: list[Any], *, backend: str, soc: Any, target: dict[str, Any], trials: int,
                spec: RunnerSpec, db_root: Path | str, seed: int, report: TuneReport | None = None,
                on_progress: Callable[[TuneProgress], None] | None = None) -> list[Any]:
    """Search the kernels' knobs with ``trials`` (see :mod:`banana.tuning.knobs`); progress continues the
    tasks' bar of ``report`` (tasks' trials first, then one step per knob candidate measured now)."""
    from banana.tuning.knobs import KnobStore, tune_kernel_knobs

    if not kernels or trials <= 0:
        return []
    store = KnobStore.open(db_root, soc.id, backend)
    started = time.perf_counter()
    tasks_total = sum(t.trials_planned for t in report.tasks) if report else 0
    tasks_done = sum(min(t.trials_in_db, t.trials_planned) for t in report.tasks) if report else 0
    best = (sum(t.weight * t.best_ms for t in report.tasks if t.best_ms is not None)
            if report and any(t.best_ms is not None for t in report.tasks) else None)
    count = {"done": 0, "rejected": 0}

    def tick(kind: str, ok: bool) -> None:
        count["done"] += 1
        count["rejected"] += not ok
        if on_progress:
            elapsed = time.perf_counter() - started
            eta = elapsed / count["done"] * max(0, trials - count["done"])
            on_progress(TuneProgress(min(tasks_done + count["done"], tasks_total + trials), tasks_total + trials,
                                     best, (report.elapsed_s if report else 0.0) + elapsed, eta, f"{kind} knobs",
                                     (report.rejected if report else 0) + count["rejected"]))

    return tune_kernel_knobs(kernels, store=store, target=target, trials=trials,
                             builder=_builder_for(spec, soc, backend),
                             runner=make_runner(spec, backend, soc=soc, target=target),
                             checker=CandidateChecker(seed=seed, target=target), runner_name=str(spec),
                             on_candidate=tick)


def tune_model(
    model: str | Path,
    *,
    backend: str,
    trials: int,
    db_root: Path | str,
    soc: str | None = None,
    runner: str = "local",
    shapes: dict[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    on_progress: Callable[[TuneProgress], None] | None = None,
    trials_per_iter: int = 16,
    default_schedules: bool = True,
) -> TuneReport:
    """Tune ``model`` (ONNX path or ``zoo:NAME``) for ``backend`` on ``soc`` with ``trials`` in total.

    Records go to ``db_root/<SOC>/<backend>/``; rerunning the same call resumes an interrupted run.
    """
    from banana.compiler.frontend.importer import import_onnx
    from banana.compiler.pipeline import resolve_model, resolve_soc
    from banana.targets.backends import get_backend

    backend_impl = get_backend(backend)
    target_soc = resolve_soc(soc, backend)
    spec = parse_runner(runner)
    check_runner(spec, backend)
    if backend not in TUNABLE_BACKENDS:
        raise BadConfigError(f"--backend {backend}: tuning supports {', '.join(TUNABLE_BACKENDS)} for now")
    path, _ = resolve_model(model)
    imported = import_onnx(path, shapes)
    imported.mod, sites = _fused(imported.mod, backend, backend_impl.target(target_soc))
    kernels: list[Any] = []
    if backend in KNOB_BACKENDS:  # banana's own kernels: a share of --trials searches their knobs
        kernels = _knob_kernels(imported.mod, sites, backend_impl.target(target_soc))
    return tune_imported(imported, backend=backend, soc=target_soc, target=backend_impl.target(target_soc),
                         trials=trials, runner=spec, db_root=db_root, seed=seed, on_progress=on_progress,
                         trials_per_iter=trials_per_iter, default_schedules=default_schedules, knob_kernels=kernels)
