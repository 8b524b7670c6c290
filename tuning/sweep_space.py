"""The sweep's search space: pipeline-level choices, their defaults per backend, and a sampler that
never proposes a configuration twice.

Every dimension is a finite list of choices (a categorical Optuna distribution), so the space is a
grid of configurations and "no trial wasted on a duplicate" can be guaranteed: :class:`UniqueSampler`
lets a multi-objective TPE propose, and when the proposal equals an existing trial's configuration
it takes the nearest configuration nobody has tried. Choices that cannot change the result are
canonicalised first (a float model has no DQAT iterations or calibration seeds), so those count
as the same configuration.

``--space`` is JSON (inline or a file) naming some dimensions, e.g.
``{"precision": ["fp32", "w8a8"], "steps": [2, 4], "fuse": [true]}``; the others keep their defaults.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from banana.compiler.errors import BadConfigError

SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "sweep_space.schema.json"

# Order is the order of the table columns; every dimension is always present in a trial's params.
DIMENSIONS = ("precision", "fuse", "steps", "tuning_trials", "dqat_iterations", "calibration_seeds")
UNIFORM_PAIRS = {"w8a8": ("int8", "int8"), "w4a8": ("int4", "int8"), "w8a16": ("int8", "int16"),
                 "w4a16": ("int4", "int16"), "w8af16": ("int8", "fp16"), "w4af16": ("int4", "fp16")}
MIXED_PREFIX = "mixed:"


def tunable_backends() -> tuple[str, ...]:
    from banana.tuning.tune import TUNABLE_BACKENDS

    return tuple(TUNABLE_BACKENDS)


@cache
def space_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def parse_precision(value: str) -> tuple[str, float | None]:
    """``fp32`` | a uniform plan (``w8a8``...) | ``mixed:F`` (mixed-precision search, byte budget F x fp32)."""
    if value == "fp32" or value in UNIFORM_PAIRS:
        return value, None
    if value.startswith(MIXED_PREFIX):
        try:
            fraction = float(value[len(MIXED_PREFIX):])
        except ValueError:
            fraction = math.nan
        if 0 < fraction <= 1:
            return "mixed", fraction
    raise BadConfigError(f"--space precision {value!r}: expected fp32, {', '.join(UNIFORM_PAIRS)} or mixed:F "
                         "with 0 < F <= 1 (byte budget as a fraction of the fp32 model)")


def default_dimensions(backend: str) -> dict[str, list[Any]]:
    """The space a plain ``banana sweep`` explores: every precision ``backend`` runs, fusion on/off,
    2-4 sampling steps, no tuning or a 64-trial budget (tunable backends), PTQ or 300 DQAT iterations."""
    from banana.compiler.quantize.capabilities import supported_pairs

    pairs = set(supported_pairs(backend))
    precision = ["fp32"] + [name for name in ("w8a8", "w4a8", "w8af16", "w4af16") if UNIFORM_PAIRS[name] in pairs]
    precision += ["mixed:0.3", "mixed:0.5"]
    return {"precision": precision, "fuse": [True, False], "steps": [2, 3, 4],
            "tuning_trials": [0, 64] if backend in tunable_backends() else [0], "dqat_iterations": [0, 300],
            "calibration_seeds": [64]}


def load_space_text(text: str | None) -> dict[str, Any]:
    """``--space`` as given: inline JSON (starts with ``{``) or the path of a JSON file; schema-checked."""
    if not text:
        return {}
    where = "--space"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        where = f"--space {path}"
        try:
            text = path.read_text()
        except OSError as e:
            raise BadConfigError(f"{where}: cannot read: {e.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadConfigError(f"{where}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(space_schema()).iter_errors(document))
    if error is not None:
        field = ".".join(str(p) for p in error.absolute_path) or "<root>"
        raise BadConfigError(f"{where}: field {field}: {error.message.splitlines()[0]}")
    return document


@dataclass(frozen=True)
class SweepSpace:
    """The choices of each dimension, validated for one backend and model kind."""

    dims: dict[str, tuple[Any, ...]]

    @classmethod
    def build(cls, backend: str, overrides: dict[str, Any] | None = None, *, quantizable: bool = True) -> SweepSpace:
        from banana.compiler.quantize.capabilities import supported_pairs

        dims = default_dimensions(backend)
        dims.update(overrides or {})
        if not quantizable:
            wanted = [p for p in dims["precision"] if p != "fp32"]
            if overrides and "precision" in overrides and wanted:
                raise BadConfigError(f"--space precision {wanted}: only zoo:NAME models can be quantized (DQAT "
                                     "trains the torch model); an ONNX model sweeps fp32 only")
            dims["precision"] = ["fp32"]
        pairs = set(supported_pairs(backend))
        for value in dims["precision"]:
            kind, _ = parse_precision(value)
            if kind in UNIFORM_PAIRS and UNIFORM_PAIRS[kind] not in pairs:
                raise BadConfigError(f"--space precision {value!r}: backend '{backend}' cannot run "
                                     f"{'/'.join(UNIFORM_PAIRS[kind])}")
        if backend not in tunable_backends() and any(t > 0 for t in dims["tuning_trials"]):
            raise BadConfigError(f"--space tuning_trials {dims['tuning_trials']}: backend '{backend}' is not "
                                 f"tunable yet ({', '.join(tunable_backends())} are); use [0]")
        return cls({k: tuple(dims[k]) for k in DIMENSIONS})

    def distributions(self) -> dict[str, BaseDistribution]:
        return {k: CategoricalDistribution(list(v)) for k, v in self.dims.items()}

    def canonical(self, params: dict[str, Any]) -> dict[str, Any]:
        """Equal results, equal params: a float model ignores the quantizer's settings."""
        out = {k: params[k] for k in DIMENSIONS}
        if out["precision"] == "fp32":
            out["dqat_iterations"] = self.dims["dqat_iterations"][0]
            out["calibration_seeds"] = self.dims["calibration_seeds"][0]
        return out

    @staticmethod
    def key(params: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(params.get(k) for k in DIMENSIONS)

    def grid(self) -> list[dict[str, Any]]:
        """Every distinct (canonical) configuration, in a stable order."""
        seen: dict[tuple[Any, ...], dict[str, Any]] = {}
        for values in itertools.product(*(self.dims[k] for k in DIMENSIONS)):
            params = self.canonical(dict(zip(DIMENSIONS, values, strict=True)))
            seen.setdefault(self.key(params), params)
        return list(seen.values())

    def to_json(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in self.dims.items()}


class UniqueSampler(BaseSampler):
    """Multi-objective TPE over the whole space at once, never repeating a configuration.

    Sampling happens under the sweep's study-wide lock (:mod:`banana.tuning.sweep_storage`), and
    every trial's params are written before the lock is released, so the check below sees every
    configuration any worker on any machine has taken, running ones included.
    """

    def __init__(self, space: SweepSpace, seed: int, base: BaseSampler | None = None) -> None:
        self.space = space
        self.seed = seed
        self.base = base or optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                                       n_startup_trials=8)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.space.distributions()

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        base_space = self.base.infer_relative_search_space(study, trial)
        proposal = dict(self.base.sample_relative(study, trial, base_space)) if base_space else {}
        for name, dist in search_space.items():
            if name not in proposal:
                proposal[name] = self.base.sample_independent(study, trial, name, dist)
        proposal = self.space.canonical(proposal)
        taken = {self.space.key(self.space.canonical(t.params)) for t in study.get_trials(deepcopy=False)
                 if t.number != trial.number and set(DIMENSIONS) <= set(t.params)
                 and t.state != TrialState.WAITING}
        if self.space.key(proposal) not in taken:
            return proposal
        free = [p for p in self.space.grid() if self.space.key(p) not in taken]
        if not free:
            return proposal  # the driver refuses --trials above the grid size; another study's trials?
        distance = [sum(p[k] != proposal[k] for k in DIMENSIONS) for p in free]
        nearest = [p for p, d in zip(free, distance, strict=True) if d == min(distance)]
        return random.Random(self.seed * 1_000_003 + trial.number).choice(nearest)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self.base.after_trial(study, trial, state, values)
