"""Tuning banana's own kernels: a search over their schedule knobs (fused attention, fp32 GEMM).

MetaSchedule has no design space for banana's kernels (they come ``tirx.is_scheduled``), but their
schedule is plain data (:class:`banana.kernels.attention.AttentionKnobs`,
:class:`banana.tuning.gemm_knobs.GemmKnobs`). For each distinct kernel of a model this module times
a bounded, deterministic list of knob candidates (the default knobs first) with the same
MetaSchedule builder and runner as the tasks (local, rpc or predict), checks every candidate
against the default-knob kernel on seeded random buffers (:class:`banana.tuning.check.CandidateChecker`;
wrong ones are logged and never chosen), and keeps the results in ``DB/<SOC>/<backend>/knobs.json``
(schema ``schemas/knobs.schema.json``, one entry per kernel kind + spec), rewritten after every
measurement so a rerun measures only what is missing. A first-session ``attention_knobs.json``
(schema version 1, attention only) is read as is and migrated to ``knobs.json`` on the next save.
``banana compile --tuning-db`` reads the best knobs back: :func:`load_tuned_knobs` for the fuse
stage's attention kernels, :func:`banana.tuning.gemm_knobs.load_tuned_gemm_knobs` for the GEMM pass.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
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

KNOBS_FILE = "knobs.json"
LEGACY_KNOBS_FILE = "attention_knobs.json"  # schema_version 1 (attention only): read, migrated on save
SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "knobs.schema.json"
KNOB_BACKENDS = ("host", "cpu")  # backends whose LLVM CPU kernels are built with given knobs
MIN_CANDIDATES = 4  # per kernel: the default knobs and at least three others
MAX_CANDIDATES = 16  # the whole attention knob_space grid today (GEMM lists are shorter)


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def canonical(data: Any) -> str:
    """Canonical JSON: equal specs/knobs give equal strings (the store's identities)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def spec_key(spec: AttentionSpec) -> str:
    """An attention kernel's identity for the fuse stage: canonical JSON of its spec (exact, shape-and-semantics)."""
    return canonical(spec.to_json())


def store_key(kind: str, spec: dict[str, Any]) -> str:
    """A kernel's key in ``knobs.json``: its kind and canonical spec (kinds never collide)."""
    return f"{kind}:{canonical(spec)}"


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


def knob_budget(trials: int, kernels: int, caps: list[int] | None = None) -> int:
    """Trials of ``--trials`` spent on kernel knobs (the MetaSchedule tasks get the rest).

    A quarter of the budget split over the kernels, each kernel between :data:`MIN_CANDIDATES`
    and :data:`MAX_CANDIDATES` (and at most its ``caps`` entry: the length of its candidate list),
    never more than ``trials``: deterministic, so a rerun resumes.
    """
    if trials <= 0 or kernels <= 0:
        return 0
    per_kernel = min(MAX_CANDIDATES, max(MIN_CANDIDATES, trials // (4 * kernels)))
    total = per_kernel * kernels if caps is None else sum(min(per_kernel, c) for c in caps)
    return min(trials, total)


def split_trials(trials: int, caps: list[int]) -> list[int]:
    """``trials`` over kernels evenly, none above its cap, leftovers to those with room (deterministic)."""
    counts = [0] * len(caps)
    left = trials
    while left > 0:
        open_ = [i for i, c in enumerate(caps) if counts[i] < c]
        if not open_:
            break
        share, extra = divmod(left, len(open_))
        for rank, i in enumerate(open_):
            give = min(caps[i] - counts[i], share + (1 if rank < extra else 0))
            counts[i] += give
            left -= give
        if share == 0 and extra == 0:
            break
    return counts


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


def _spec_json(spec: Any) -> dict[str, Any]:
    return spec if isinstance(spec, dict) else spec.to_json()


class KnobStore:
    """``knobs.json`` of one SoC/backend: every measured candidate and the best, per kernel kind + spec."""

    def __init__(self, path: Path, payload: dict[str, Any], legacy: Path | None = None) -> None:
        self.path = path
        self.payload = payload
        self.legacy = legacy  # a version-1 attention_knobs.json this payload was migrated from

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BadConfigError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
        error = jsonschema.exceptions.best_match(_validator().iter_errors(payload))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise BadConfigError(f"{path}: field '{where}': {error.message}")
        return payload

    @staticmethod
    def _migrate(payload: dict[str, Any]) -> dict[str, Any]:
        """Version 1 (attention only, keyed by spec JSON) -> version 2 (keyed by kind + spec)."""
        kernels = {store_key(e["kernel"], e["spec"]): e for e in payload["kernels"].values()}
        return {"schema_version": SCHEMA_VERSION, "soc": payload["soc"], "backend": payload["backend"],
                "kernels": kernels}

    @classmethod
    def open(cls, root: Path | str, soc_id: str, backend: str, *, create: bool = True) -> KnobStore | None:
        directory = database_dir(root, soc_id, backend)
        path, legacy = directory / KNOBS_FILE, directory / LEGACY_KNOBS_FILE
        if path.is_file():
            return cls(path, cls._load(path))
        if legacy.is_file():
            logger.info("%s: version-1 knob store, migrated to %s on the next save", legacy, KNOBS_FILE)
            return cls(path, cls._migrate(cls._load(legacy)), legacy)
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path, {"schema_version": SCHEMA_VERSION, "soc": soc_id, "backend": backend, "kernels": {}})

    def entry(self, spec: Any, default: Any, kind: str = "attention") -> dict[str, Any]:
        """The stored entry of a kernel (created empty): ``spec``/``default`` are objects with
        ``to_json()`` (or the JSON itself for ``spec``)."""
        data = _spec_json(spec)
        return self.payload["kernels"].setdefault(store_key(kind, data), {
            "kernel": kind, "spec": data, "default": default.to_json(), "measured": [],
            "best": None, "best_seconds": None})

    def measured(self, spec: Any, kind: str = "attention") -> dict[str, dict[str, Any]]:
        """Canonical knobs JSON -> stored measurement of the kernel."""
        entry = self.payload["kernels"].get(store_key(kind, _spec_json(spec)), {"measured": []})
        return {canonical(m["knobs"]): m for m in entry["measured"]}

    def best_json(self, kind: str, *, changed_only: bool = False) -> dict[str, dict[str, Any]]:
        """Canonical spec JSON -> best verified knobs JSON of every ``kind`` kernel that has one
        (``changed_only``: only those whose best is not the default)."""
        return {canonical(e["spec"]): e["best"] for e in self.payload["kernels"].values()
                if e["kernel"] == kind and e["best"] and not (changed_only and e["best"] == e["default"])}

    def best(self) -> dict[str, AttentionKnobs]:
        """Attention spec key -> best verified knobs (kernels without a verified measurement are absent)."""
        return {key: _knobs_from_json(knobs) for key, knobs in self.best_json("attention").items()}

    def save(self) -> None:
        _write_json_atomic(self.path, self.payload)
        if self.legacy is not None and self.legacy.is_file():
            self.legacy.unlink()  # migrated: knobs.json is now the one copy
        self.legacy = None


def load_best_knobs(root: Path | str | None, soc_id: str, backend: str, kind: str, *,
                    changed_only: bool = False) -> dict[str, dict[str, Any]]:
    """Canonical spec JSON -> best knobs JSON of ``kind`` kernels ({} without a database or store)."""
    if root is None or backend not in KNOB_BACKENDS:
        return {}
    store = KnobStore.open(root, soc_id, backend, create=False)
    return store.best_json(kind, changed_only=changed_only) if store is not None else {}


def load_tuned_knobs(root: Path | str | None, soc_id: str, backend: str) -> dict[str, AttentionKnobs]:
    """The best attention knobs stored by ``banana tune`` for a SoC/backend ({} without a database or file)."""
    return {key: _knobs_from_json(k) for key, k in load_best_knobs(root, soc_id, backend, "attention").items()}


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
    kind: str = "attention"


@dataclass
class KnobKernel:
    """One kernel whose knobs are searched: its store identity, default knobs, candidates and builder."""

    kind: str
    spec: dict[str, Any]  # JSON
    default: Any  # knobs (``to_json()``)
    candidates: Callable[[int], list[Any]]  # the first ``count`` candidates, default first, deterministic
    module: Callable[[Any], tvm.IRModule]  # knobs -> IRModule with the kernel as "main"

    @property
    def key(self) -> str:
        return store_key(self.kind, self.spec)


def _kernel_module(spec: AttentionSpec, num_cores: int, knobs: AttentionKnobs) -> tvm.IRModule:
    func, _ = cpu_kernel(spec, num_cores, knobs)
    return as_deployed(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))


def as_deployed(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod``'s kernel as the LLVM pipeline ships it: small kernels lose their parallel loops
    (:mod:`banana.compiler.passes.small_kernels`). Why: a knob candidate timed with its parallel loop
    pays a thread-pool fork/join the built model never pays (nano DiT's 16x128x32 GEMM: 12.6 us timed
    parallel, 2.4 us as built), so the search compared launch overheads, not the knobs."""
    from banana.compiler.passes.small_kernels import serialize_small_kernels

    return serialize_small_kernels()(mod)


def attention_kernels(specs: list[AttentionSpec], cores: int) -> list[KnobKernel]:
    """The knob search of each attention spec (``cores`` as the fuse stage counts them)."""
    return [KnobKernel("attention", spec.to_json(), default_knobs(spec, cores),
                       functools.partial(candidates, spec, cores),
                       functools.partial(lambda s, k: _kernel_module(s, cores, k), spec))
            for spec in specs]


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

CONFIRM_ROUNDS = 3
"""A non-default winner is re-timed against the default this many times each, interleaved, and kept only
if its median still beats the default's by :data:`REPLACE_MARGIN`: one timing per candidate on the
shared host picks noise (the small DiT's search saw the same kernel at 0.9 and 5.9 ms)."""


def _retime(mods: list[tvm.IRModule], target: tvm.target.Target, builder: Any, runner: Any,
            rounds: int) -> list[list[float]] | None:
    """Per module, ``rounds`` mean run seconds, the modules timed alternately (load hits them alike)."""
    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(mod, target) for mod in mods])
    try:
        if any(b.error_msg is not None for b in built):
            return None
        device = "cpu" if target.kind.name == "llvm" else target.kind.name
        times: list[list[float]] = [[] for _ in mods]
        for _ in range(rounds):
            for index, (mod, b) in enumerate(zip(mods, built, strict=True)):
                args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
                (future,) = runner.run([ms.runner.RunnerInput(b.artifact_path, device, args)])
                ran = future.result()
                if ran.error_msg is not None or not ran.run_secs:
                    return None
                secs = [float(x) for x in ran.run_secs]
                times[index].append(sum(secs) / len(secs))
        return times
    finally:
        for b in built:
            if b.artifact_path:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)


def _confirm(kernel: KnobKernel, entry: dict[str, Any], target: tvm.target.Target, builder: Any, runner: Any,
             runner_name: str) -> None:
    """Re-time a non-default best against the default (:data:`CONFIRM_ROUNDS`); revert to the default
    if it does not hold up. Stored in ``entry["confirmation"]`` so a rerun does not repeat it."""
    best, default = entry["best"], kernel.default.to_json()
    if not best or best == default or runner_name == "predict":  # predictions do not vary between runs
        return
    done = entry.get("confirmation")
    if done is not None and done["knobs"] == best:
        return
    challenger = next(k for k in kernel.candidates(MAX_CANDIDATES) if k.to_json() == best)
    times = _retime([kernel.module(kernel.default), kernel.module(challenger)], target, builder, runner,
                    CONFIRM_ROUNDS)
    if times is None:
        logger.warning("%s knobs %s: re-timing failed, kept on its search time", kernel.kind, best)
        return
    default_s, best_s = (sorted(t)[len(t) // 2] for t in times)
    kept = best_s < default_s * (1 - REPLACE_MARGIN)
    entry["confirmation"] = {"knobs": best, "default_seconds": default_s, "best_seconds": best_s, "kept": kept,
                             "rounds": CONFIRM_ROUNDS, "runner": runner_name}
    if kept:
        entry["best_seconds"] = best_s
    else:
        logger.info("%s knobs %s not confirmed (median %.4g vs default %.4g ms): default kept", kernel.kind, best,
                    best_s * 1e3, default_s * 1e3)
        entry["best"], entry["best_seconds"] = default, default_s


def tune_kernel_knobs(kernels: list[KnobKernel], *, store: KnobStore, target: dict[str, Any], trials: int,
                      builder: Any, runner: Any, checker: Any, runner_name: str,
                      on_candidate: Callable[[str, bool], None] | None = None) -> list[KnobReport]:
    """Measure up to ``trials`` knob candidates over ``kernels`` (split evenly, each at most its
    candidate list); candidates already in ``store`` are skipped, so a rerun resumes.
    ``on_candidate(kind, ok)`` after each measured candidate (progress)."""
    if not kernels or trials <= 0:
        return []
    tvm_target = tvm.target.Target(target)
    caps = [len(kernel.candidates(MAX_CANDIDATES)) for kernel in kernels]
    reports = []
    for kernel, count in zip(kernels, split_trials(trials, caps), strict=True):
        entry = store.entry(kernel.spec, kernel.default, kernel.kind)
        done = store.measured(kernel.spec, kernel.kind)
        reference = None
        now = rejected = 0
        for knobs in kernel.candidates(count) if count else []:
            ident = canonical(knobs.to_json())
            if ident in done:
                continue
            if reference is None:
                reference = kernel.module(kernel.default)
            mod = kernel.module(knobs)
            result = checker.check(reference, mod)
            seconds, reason = (None, result.reason) if not result.ok else _time(mod, tvm_target, builder, runner)
            ok = result.ok and seconds is not None
            if not result.ok:
                rejected += 1
                logger.warning("%s knobs %s rejected: wrong output (%s)", kernel.kind, knobs.to_json(), result.reason)
            elif seconds is None:
                logger.warning("%s knobs %s failed: %s", kernel.kind, knobs.to_json(), reason)
            record = {"knobs": knobs.to_json(), "ok": ok, "seconds": seconds, "runner": runner_name,
                      "reason": reason}
            entry["measured"].append(record)
            done[ident] = record
            if ok and (entry["best_seconds"] is None or seconds < entry["best_seconds"] * (1 - REPLACE_MARGIN)):
                entry["best"], entry["best_seconds"] = knobs.to_json(), seconds
            now += 1
            store.save()  # after every candidate: an interrupted run loses at most the one in flight
            if on_candidate:
                on_candidate(kernel.kind, ok)
        if count:
            _confirm(kernel, entry, tvm_target, builder, runner, runner_name)
            store.save()
        default_rec = done.get(canonical(kernel.default.to_json()))
        default_s = default_rec["seconds"] if default_rec and default_rec["ok"] else None
        conf = entry.get("confirmation")
        if conf is not None and (conf["knobs"] == entry["best"] or not conf["kept"]):
            default_s = conf["default_seconds"]  # best and default from the same interleaved re-timing
        reports.append(KnobReport(kernel.key, now, len(entry["measured"]), rejected,
                                  None if default_s is None else default_s * 1e3,
                                  None if entry["best_seconds"] is None else entry["best_seconds"] * 1e3,
                                  entry["best"], kernel.kind))
        logger.info("%s kernel %s: default %s ms, best %s ms with %s", kernel.kind, canonical(kernel.spec),
                    reports[-1].default_ms, reports[-1].best_ms, entry["best"])
    store.save()
    return reports


def tune_attention_knobs(specs: list[AttentionSpec], *, store: KnobStore, target: dict[str, Any], trials: int,
                         builder: Any, runner: Any, checker: Any, runner_name: str) -> list[KnobReport]:
    """:func:`tune_kernel_knobs` over attention kernels (``num-cores`` of ``target`` as the fuse stage reads it)."""
    cores = int(target.get("num-cores", 1))
    return tune_kernel_knobs(attention_kernels(specs, cores), store=store, target=target, trials=trials,
                             builder=builder, runner=runner, checker=checker, runner_name=runner_name)
