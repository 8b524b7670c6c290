"""``banana sweep``: a multi-objective Optuna study over pipeline-level choices, on many workers.

    banana sweep MODEL --soc S --backend B --trials N [--storage URL] [--study-name NAME]
                       [--workers K] [--space JSON] [--out DIR] [--seed S]

The driver validates everything first (nothing is written for bad input), creates the study once
(two processes creating the schema at the same moment race), then runs ``K`` workers on this
machine (this process and K-1 child processes). Another machine running the same command with
the same PostgreSQL URL and study name joins the same study. Each worker repeats: under the
study-wide lock, stop if the study holds ``N`` trials, else create a trial and sample its whole
configuration (never one already taken); then run it (:mod:`banana.tuning.sweep_trial`) and
report the three objectives. So the study ends with exactly ``N`` trials. A trial that raises is
told FAIL with the error in its user attributes; one whose worker dies is marked FAIL by the
driver (same machine) or by any worker once its heartbeat is older than the grace period.

The result (:mod:`banana.tuning.sweep_pareto`): pareto.json/.md/.png in ``--out``; the study
itself stays in the storage, readable by ``optuna.load_study`` and optuna-dashboard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from banana.compiler.errors import BadConfigError, BananaError
from banana.tuning.sweep_pareto import OBJECTIVES, write_outputs
from banana.tuning.sweep_space import SweepSpace, UniqueSampler, load_space_text
from banana.tuning.sweep_storage import StudyLock, open_storage, redact, scheme
from banana.tuning.sweep_trial import LATENCY_SOURCES, TrialContext, evaluate

logger = logging.getLogger(__name__)

CONFIG_ATTR = "banana_sweep"
MAX_WORKERS = 64
FIDELITY_REFERENCES = ("max-steps", "same-steps")


@dataclass
class SweepConfig:
    """Everything a ``banana sweep`` command says; :func:`prepare` checks it."""

    model: str
    backend: str
    trials: int
    out: Path
    soc: str | None = None
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    space: str | dict[str, Any] | None = None  # --space text (inline JSON or a file) or the parsed overrides
    seed: int = 0
    cache_dir: Path | None = None
    latency: str = "predicted"
    tune_runner: str = "predict"
    fidelity_reference: str = "max-steps"  # or "same-steps"


@dataclass
class SweepPlan:
    """A validated sweep, serialisable so worker processes receive exactly the same one."""

    model: str
    backend: str
    soc: str | None
    soc_id: str
    trials: int
    out: str
    storage: str
    study_name: str
    workers: int
    space: dict[str, list[Any]]
    seed: int
    cache_dir: str
    latency: str
    tune_runner: str
    fidelity_reference: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SweepPlan:
        return cls(**json.loads(text))

    @property
    def sweep_space(self) -> SweepSpace:
        return SweepSpace({k: tuple(v) for k, v in self.space.items()})

    def study_identity(self) -> dict[str, Any]:
        """What a joining worker must agree on (the trial count may grow between runs)."""
        return {"model": self.model, "backend": self.backend, "soc": self.soc_id, "space": self.space,
                "seed": self.seed, "latency": self.latency, "tune_runner": self.tune_runner,
                "fidelity_reference": self.fidelity_reference,
                "objectives": [n for n, _ in OBJECTIVES]}

    def context(self) -> TrialContext:
        return TrialContext(model=self.model, backend=self.backend, soc=self.soc, cache_dir=Path(self.cache_dir),
                            seed=self.seed, latency=self.latency, tune_runner=self.tune_runner,
                            reference_steps=max(self.space["steps"]) if self.fidelity_reference == "max-steps"
                            else None)


@dataclass
class SweepResult:
    plan: SweepPlan
    document: dict[str, Any]
    worker_exit_codes: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0


def _model_label(model: str) -> str:
    text = model.removeprefix("zoo:") if model.startswith("zoo:") else Path(model).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:40] or "model"


def _check_denoiser_onnx(path: Path) -> None:
    """An ONNX model must load and take the sampler's inputs; found now, not in every trial."""
    import onnx

    from banana.compiler.errors import BadModelError
    from banana.compiler.zoo.export import INPUT_NAMES

    if not path.is_file():
        raise BadConfigError(f"model {path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise BadModelError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
    names = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}
    if names != set(INPUT_NAMES):
        raise BadModelError(f"{path}: inputs {sorted(names)}; a sweep samples denoisers with inputs "
                            f"{', '.join(INPUT_NAMES)}")


def prepare(config: SweepConfig) -> SweepPlan:
    """Check every option without writing anything; BadConfigError names the first bad one."""
    from banana.compiler.pipeline import ZOO_PREFIX, default_cache_dir, resolve_soc
    from banana.compiler.zoo import REFERENCE_MODELS
    from banana.targets.backends import backend_names

    if config.backend not in backend_names():
        raise BadConfigError(f"--backend {config.backend}: expected one of {', '.join(backend_names())}")
    soc = resolve_soc(config.soc, config.backend)
    if config.trials < 1:
        raise BadConfigError(f"--trials {config.trials}: must be >= 1")
    if not 1 <= config.workers <= MAX_WORKERS:
        raise BadConfigError(f"--workers {config.workers}: expected 1..{MAX_WORKERS}")
    if config.latency not in LATENCY_SOURCES:
        raise BadConfigError(f"--latency {config.latency}: expected {' or '.join(LATENCY_SOURCES)}")
    if config.latency == "measured" and config.backend != "host":
        raise BadConfigError(f"--latency measured: only --backend host runs on this machine (not {config.backend})")
    if config.fidelity_reference not in FIDELITY_REFERENCES:
        raise BadConfigError(f"--fidelity-reference {config.fidelity_reference}: expected "
                             f"{' or '.join(FIDELITY_REFERENCES)}")
    zoo = config.model.startswith(ZOO_PREFIX)
    if zoo and config.model[len(ZOO_PREFIX):] not in REFERENCE_MODELS:
        raise BadConfigError(f"model {config.model}: unknown reference; known: "
                             f"{', '.join('zoo:' + n for n in REFERENCE_MODELS)}")
    if not zoo:
        _check_denoiser_onnx(Path(config.model))
    overrides = load_space_text(config.space) if isinstance(config.space, str | None) else dict(config.space)
    space = SweepSpace.build(config.backend, overrides, quantizable=zoo)
    size = len(space.grid())
    if config.trials > size:
        raise BadConfigError(f"--trials {config.trials}: the space has only {size} distinct configurations "
                             "(widen --space or ask for fewer trials)")
    out = Path(config.out).absolute()
    storage = config.storage or f"sqlite:///{out / 'sweep.db'}"
    scheme(storage)
    model = config.model if zoo else str(Path(config.model).absolute())
    space_json = space.to_json()
    digest = hashlib.sha256(json.dumps([space_json, config.seed, config.latency, config.fidelity_reference],
                                       sort_keys=True).encode())
    name = config.study_name or (f"sweep-{_model_label(config.model)}-{soc.id}-{config.backend}-"
                                 f"{digest.hexdigest()[:8]}")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", name):
        raise BadConfigError(f"--study-name {name!r}: use letters, digits and _.:- (at most 200)")
    cache_dir = Path(config.cache_dir).absolute() if config.cache_dir else default_cache_dir() / "sweep"
    return SweepPlan(model=model, backend=config.backend, soc=config.soc, soc_id=soc.id, trials=config.trials,
                     out=str(out), storage=storage, study_name=name, workers=config.workers, space=space_json,
                     seed=config.seed, cache_dir=str(cache_dir), latency=config.latency,
                     tune_runner=config.tune_runner, fidelity_reference=config.fidelity_reference)


def create_or_join(plan: SweepPlan, storage: Any) -> optuna.Study:
    """Create the study (or load it: another machine may have made it) and check it is this sweep's."""
    try:
        study = optuna.create_study(storage=storage, study_name=plan.study_name, load_if_exists=True,
                                    directions=[d for _, d in OBJECTIVES])
    except Exception as e:  # direction mismatch of an existing study, storage errors
        raise BadConfigError(f"study {plan.study_name} in {redact(plan.storage)}: {str(e).splitlines()[0]}") from None
    identity = plan.study_identity()
    existing = study.user_attrs.get(CONFIG_ATTR)
    if existing is None:
        study.set_user_attr(CONFIG_ATTR, identity)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([n for n, _ in OBJECTIVES])  # optuna-dashboard labels its axes with them
    elif existing != identity:
        differing = sorted(k for k in identity if existing.get(k) != identity[k])
        raise BadConfigError(f"study {plan.study_name} in {redact(plan.storage)} belongs to another sweep "
                             f"(differs in {', '.join(differing)}); choose another --study-name")
    return study


class _Heartbeat:
    """Records a running trial's heartbeat so a dead worker's trial can be recognised and failed."""

    def __init__(self, storage: Any, trial_id: int, interval_s: float) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(storage, trial_id, interval_s), daemon=True)

    def _run(self, storage: Any, trial_id: int, interval_s: float) -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as e:  # a missed beat is not fatal; the grace period covers a few
                logger.warning("heartbeat of trial %d failed: %s", trial_id, e)
            if self.stop.wait(interval_s):
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_worker(plan: SweepPlan, index: int = 0,
               on_trial: Callable[[FrozenTrial], None] | None = None) -> int:
    """Take and run trials until the study holds ``plan.trials``; returns how many this worker ran."""
    from optuna.storages import fail_stale_trials

    storage = open_storage(plan.storage)
    space = plan.sweep_space
    sampler = UniqueSampler(space, seed=plan.seed * 1009 + index)
    study = optuna.load_study(study_name=plan.study_name, storage=storage, sampler=sampler)
    lock = StudyLock(plan.storage, plan.study_name)
    ctx = plan.context()
    distributions = space.distributions()
    ran = 0
    try:
        while True:
            with lock.hold(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeat-with-ask and experimental-feature notices
                fail_stale_trials(study)
                if len(study.get_trials(deepcopy=False)) >= plan.trials:
                    break
                trial = study.ask(fixed_distributions=distributions)
                trial.set_user_attr("worker", worker_id())
            ran += 1
            params = dict(trial.params)
            logger.info("trial %d: %s", trial.number, params)
            with _Heartbeat(storage, trial._trial_id, storage.heartbeat_interval or 10):
                try:
                    outcome = evaluate(ctx, params)
                except BaseException as e:
                    message = " ".join(str(e).split())[:2000] or type(e).__name__
                    trial.set_user_attr("error", f"{type(e).__name__}: {message}")
                    study.tell(trial, state=TrialState.FAIL)
                    logger.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, message)
                    if not isinstance(e, Exception):
                        raise  # KeyboardInterrupt/SystemExit: stop this worker after recording
                    if on_trial:
                        on_trial(study._storage.get_trial(trial._trial_id))
                    continue
            for key, value in outcome.attrs.items():
                trial.set_user_attr(key, value)
            frozen = study.tell(trial, list(outcome.values))
            logger.info("trial %d: latency %.3f ms, PSNR %.2f dB, %d bytes", trial.number, *outcome.values)
            if on_trial:
                on_trial(frozen)
    finally:
        lock.close()
    return ran


def _fail_orphans(study: optuna.Study, workers: dict[str, int]) -> int:
    """Trials left RUNNING by this machine's dead workers become FAIL, with the exit code."""
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        code = workers.get(str(t.user_attrs.get("worker")))
        if code is None:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "error", f"worker process exited with code {code}")
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            failed += 1
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    return failed


def _wait_for_others(study: optuna.Study, poll_s: float = 2.0) -> None:
    """Trials still running on other machines finish (or, heartbeat gone, become FAIL) before the
    front is written, so every command of one study reports the same, complete front."""
    from optuna.storages import fail_stale_trials

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        logger.info("waiting for %d trials running elsewhere: %s", len(running),
                    ", ".join(f"#{t.number} on {t.user_attrs.get('worker')}" for t in running))
        time.sleep(poll_s)


def _run_workers(plan: SweepPlan, on_trial: Callable[[FrozenTrial], None] | None) -> dict[str, int]:
    """Worker 0 in this process, workers 1..K-1 as child processes; returns child worker id -> exit code."""
    host = socket.gethostname()
    study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan.storage))
    remaining = plan.trials - len(study.get_trials(deepcopy=False))
    procs = []
    for i in range(1, min(plan.workers, max(remaining, 1))):  # no more workers than trials left
        # the plan (storage URL, maybe with a password) goes through stdin: argv is world-readable in ps
        proc = subprocess.Popen([sys.executable, "-m", "banana.tuning.sweep", "--worker", str(i)],
                                stdin=subprocess.PIPE, text=True)
        assert proc.stdin is not None
        proc.stdin.write(plan.to_json())
        proc.stdin.close()
        procs.append(proc)
    try:
        run_worker(plan, 0, on_trial)
        codes = {f"{host}:{p.pid}": p.wait() for p in procs}
    except BaseException:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    return codes


def run_sweep(config: SweepConfig, on_trial: Callable[[FrozenTrial], None] | None = None) -> SweepResult:
    """Validate, create or join the study, run the workers, write the Pareto outputs."""
    start = time.perf_counter()
    plan = prepare(config)
    out = Path(plan.out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        storage = open_storage(plan.storage)
        study = create_or_join(plan, storage)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    codes = _run_workers(plan, on_trial)
    orphans = _fail_orphans(study, {w: c for w, c in codes.items() if c != 0})
    if orphans:
        logger.warning("%d trials of dead workers marked FAIL", orphans)
    _wait_for_others(study)
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    document = write_outputs(study, out, storage=redact(plan.storage), model=plan.model, soc=plan.soc_id,
                             backend=plan.backend, space=plan.space, requested=plan.trials)
    return SweepResult(plan, document, list(codes.values()), time.perf_counter() - start)


def _worker_main(argv: list[str]) -> int:
    """``python -m banana.tuning.sweep --worker INDEX < PLAN_JSON``: one worker process of a sweep."""
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m banana.tuning.sweep --worker INDEX < PLAN_JSON", file=sys.stderr)  # noqa: T201
        return 2
    logging.basicConfig(level=logging.INFO if os.environ.get("BANANA_SWEEP_VERBOSE") else logging.WARNING,
                        format=f"%(levelname)s worker {argv[1]} %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)  # K workers share the cores (banana quantize trains on one thread too)
    try:
        run_worker(SweepPlan.from_json(sys.stdin.read()), int(argv[1]))
    except BananaError as e:
        print(f"banana: error: worker {argv[1]}: {' '.join(str(e).split())}", file=sys.stderr)  # noqa: T201
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
