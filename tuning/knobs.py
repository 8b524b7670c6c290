"""Tuning banana's own kernels: a search over the fused attention kernel's schedule knobs.

MetaSchedule has no design space for banana's kernels (they come ``tirx.is_scheduled``), but their
schedule is plain data (:class:`banana.kernels.attention.AttentionKnobs`). For each distinct
attention kernel of a model this module times a bounded, deterministic list of knob candidates
(the default knobs first) with the same MetaSchedule builder and runner as the tasks (local, rpc
or predict), checks every candidate against the default-knob kernel on seeded random buffers
(:class:`banana.tuning.check.CandidateChecker`; wrong ones are logged and never chosen), and keeps
the results in ``DB/<SOC>/<backend>/attention_knobs.json`` (schema ``schemas/knobs.schema.json``),
rewritten after every measurement so a rerun measures only what is missing. ``banana compile
--tuning-db`` reads the best knobs back with :func:`load_tuned_knobs` for its fuse stage.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import tvm

from banana.compiler.errors import BadConfigError
from banana.compiler.passes.attention import AttentionSite, cpu_kernel
from banana.kernels.attention import AttentionKnobs, AttentionSpec, default_knobs, knob_space
from banana.tuning.database import _write_json_atomic, database_dir

logger = logging.getLogger(__name__)

KNOBS_FILE = "attention_knobs.json"
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "knobs.schema.json"
KNOB_BACKENDS = ("host", "cpu")  # backends whose fuse stage builds the LLVM CPU kernel with given knobs
MIN_CANDIDATES = 4  # per kernel: the default knobs and at least three others
MAX_CANDIDATES = 16  # the whole knob_space grid today


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def spec_key(spec: AttentionSpec) -> str:
    """The kernel's identity in the store: canonical JSON of its spec (exact, shape-and-semantics)."""
    return json.dumps(spec.to_json(), sort_keys=True, separators=(",", ":"))


def spec_from_site(site: AttentionSite) -> AttentionSpec:
    """The :class:`AttentionSpec` a fused site's kernel was generated for (the site records all of it)."""
    mask = tuple(site.mask) if site.mask else None
    return AttentionSpec(batch=site.batch, q_heads=site.q_heads, kv_heads=site.kv_heads, q_len=site.q_len,
                         kv_len=site.kv_len, head_dim=site.head_dim, scale=site.scale,
                         head_map=site.head_map,  # type: ignore[arg-type]
                         causal=site.causal, mask_shape=mask, dtype=site.dtype)  # type: ignore[arg-type]


def distinct_specs(sites: list[AttentionSite]) -> list[AttentionSpec]:
    """One spec per kernel (sites with equal specs share one kernel), in first-seen order."""
    seen: dict[str, AttentionSpec] = {}
    for site in sites:
        spec = spec_from_site(site)
        seen.setdefault(spec_key(spec), spec)
    return list(seen.values())


def knob_budget(trials: int, kernels: int) -> int:
    """Trials of ``--trials`` spent on kernel knobs (the MetaSchedule tasks get the rest).

    A quarter of the budget split over the kernels, each kernel between :data:`MIN_CANDIDATES`
    and :data:`MAX_CANDIDATES`, never more than ``trials``: deterministic, so a rerun resumes.
    """
    if trials <= 0 or kernels <= 0:
        return 0
    per_kernel = min(MAX_CANDIDATES, max(MIN_CANDIDATES, trials // (4 * kernels)))
    return min(trials, per_kernel * kernels)


def candidates(spec: AttentionSpec, num_cores: int, count: int) -> list[AttentionKnobs]:
    """The default knobs, then the ``knob_space`` grid nearest the default first (log2 distance)."""
    base = default_knobs(spec, num_cores)
    space = knob_space(spec)
    grid = [AttentionKnobs(tile_q=q, tile_kv=kv, parallel=base.parallel)
            for q in space["tile_q"] for kv in space["tile_kv"]]

    def distance(k: AttentionKnobs) -> tuple[float, int, int]:
        return (abs(math.log2(k.tile_q / base.tile_q)) + abs(math.log2(k.tile_kv / base.tile_kv)),
                k.tile_q, k.tile_kv)

    ordered = [base] + sorted((k for k in grid if k != base), key=distance)
    return ordered[:max(1, count)]


def _knobs_from_json(data: dict[str, int]) -> AttentionKnobs:
    return AttentionKnobs(tile_q=int(data["tile_q"]), tile_kv=int(data["tile_kv"]),
                          parallel=bool(data.get("parallel", 1)))


class KnobStore:
    """``attention_knobs.json`` of one SoC/backend: every measured candidate and the best per kernel."""

    def __init__(self, path: Path, payload: dict[str, Any]) -> None:
        self.path = path
        self.payload = payload

    @classmethod
    def open(cls, root: Path | str, soc_id: str, backend: str, *, create: bool = True) -> KnobStore | None:
        path = database_dir(root, soc_id, backend) / KNOBS_FILE
        if path.is_file():
            payload = json.loads(path.read_text())
            error = jsonschema.exceptions.best_match(_validator().iter_errors(payload))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                raise BadConfigError(f"{path}: field '{where}': {error.message}")
            return cls(path, payload)
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path, {"schema_version": 1, "soc": soc_id, "backend": backend, "kernels": {}})

    def entry(self, spec: AttentionSpec, default: AttentionKnobs) -> dict[str, Any]:
        return self.payload["kernels"].setdefault(spec_key(spec), {
            "kernel": "attention", "spec": spec.to_json(), "default": default.to_json(), "measured": [],
            "best": None, "best_seconds": None})

    def measured(self, spec: AttentionSpec) -> dict[tuple[int, int, int], dict[str, Any]]:
        entry = self.payload["kernels"].get(spec_key(spec), {"measured": []})
        return {(m["knobs"]["tile_q"], m["knobs"]["tile_kv"], m["knobs"]["parallel"]): m for m in entry["measured"]}

    def best(self) -> dict[str, AttentionKnobs]:
        """Spec key -> best verified knobs (kernels without a verified measurement are absent)."""
        return {key: _knobs_from_json(e["best"]) for key, e in self.payload["kernels"].items() if e["best"]}

    def save(self) -> None:
        _write_json_atomic(self.path, self.payload)


def load_tuned_knobs(root: Path | str | None, soc_id: str, backend: str) -> dict[str, AttentionKnobs]:
    """The best knobs stored by ``banana tune`` for a SoC/backend ({} without a database or file)."""
    if root is None or backend not in KNOB_BACKENDS:
        return {}
    store = KnobStore.open(root, soc_id, backend, create=False)
    return store.best() if store is not None else {}


@dataclass
class KnobReport:
    """One kernel's result: candidates measured now / stored in all, rejected now, best vs default."""

    key: str
    measured_now: int
    measured_total: int
    rejected: int
    default_ms: float | None
    best_ms: float | None
    best: dict[str, int] | None


def _kernel_module(spec: AttentionSpec, num_cores: int, knobs: AttentionKnobs) -> tvm.IRModule:
    func, _ = cpu_kernel(spec, num_cores, knobs)
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _time(mod: tvm.IRModule, target: tvm.target.Target, builder: Any, runner: Any) -> tuple[float | None, str]:
    """Mean run seconds of ``mod`` through a MetaSchedule builder + runner, or (None, error)."""
    from tvm.s_tir import meta_schedule as ms

    (built,) = builder.build([ms.builder.BuilderInput(mod, target)])
    if built.error_msg is not None:
        return None, f"build failed: {built.error_msg.strip().splitlines()[-1:]}"
    try:
        args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        device = "cpu" if target.kind.name == "llvm" else target.kind.name  # the runner's device name
        (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, device, args)])
        ran = future.result()
    finally:
        # like MetaSchedule's RemoveBuildArtifact: each artifact has its own mkdtemp() directory
        shutil.rmtree(os.path.dirname(built.artifact_path), ignore_errors=True)
    if ran.error_msg is not None or not ran.run_secs:
        return None, f"run failed: {(ran.error_msg or 'no run time').strip().splitlines()[-1:]}"
    secs = [float(x) for x in ran.run_secs]
    return sum(secs) / len(secs), ""


REPLACE_MARGIN = 0.10
"""A candidate must beat the best so far by this share to replace it: the default is measured first,
and on 20-50 us kernels a single lucky timing is otherwise taken for a gain (NOTES.md)."""


def tune_attention_knobs(specs: list[AttentionSpec], *, store: KnobStore, target: dict[str, Any], trials: int,
                         builder: Any, runner: Any, checker: Any, runner_name: str) -> list[KnobReport]:
    """Measure up to ``trials`` knob candidates over ``specs`` (split evenly); skip stored ones."""
    if not specs or trials <= 0:
        return []
    tvm_target = tvm.target.Target(target)
    cores = int(target.get("num-cores", 1))  # as the fuse stage counts them: same default knobs
    per_kernel = [trials // len(specs) + (1 if i < trials % len(specs) else 0) for i in range(len(specs))]
    reports = []
    for spec, count in zip(specs, per_kernel, strict=True):
        default = default_knobs(spec, cores)
        entry = store.entry(spec, default)
        done = store.measured(spec)
        reference = _kernel_module(spec, cores, default)
        now = rejected = 0
        for knobs in candidates(spec, cores, count):
            ident = (knobs.tile_q, knobs.tile_kv, int(knobs.parallel))
            if ident in done:
                continue
            mod = _kernel_module(spec, cores, knobs)
            result = checker.check(reference, mod)
            seconds, reason = (None, result.reason) if not result.ok else _time(mod, tvm_target, builder, runner)
            ok = result.ok and seconds is not None
            if not result.ok:
                rejected += 1
                logger.warning("attention knobs %s rejected: wrong output (%s)", knobs.to_json(), result.reason)
            elif seconds is None:
                logger.warning("attention knobs %s failed: %s", knobs.to_json(), reason)
            record = {"knobs": knobs.to_json(), "ok": ok, "seconds": seconds, "runner": runner_name,
                      "reason": reason}
            entry["measured"].append(record)
            done[ident] = record
            if ok and (entry["best_seconds"] is None or seconds < entry["best_seconds"] * (1 - REPLACE_MARGIN)):
                entry["best"], entry["best_seconds"] = knobs.to_json(), seconds
            now += 1
            store.save()  # after every candidate: an interrupted run loses at most the one in flight
        default_rec = done.get((default.tile_q, default.tile_kv, int(default.parallel)))
        default_s = default_rec["seconds"] if default_rec and default_rec["ok"] else None
        reports.append(KnobReport(spec_key(spec), now, len(entry["measured"]), rejected,
                                  None if default_s is None else default_s * 1e3,
                                  None if entry["best_seconds"] is None else entry["best_seconds"] * 1e3,
                                  entry["best"]))
        logger.info("attention kernel %s: default %s ms, best %s ms with %s", spec_key(spec),
                    reports[-1].default_ms, reports[-1].best_ms, entry["best"])
    store.save()
    return reports
