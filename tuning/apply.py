"""Applying a tuning database in a build: tuned tasks take their record, the rest keep the rules.

The pipeline opens the database for the build's SoC and backend with :func:`apply_tuning_database`;
the LLVM lowering calls :func:`apply_active_records` between fusion and the default schedule rules
and this module remembers which tasks were tuned and which were not, for the manifest and the CLI.
The build and its report's analysis both lower the module inside the same context, so records are
applied twice per compile: each task is listed once.

banana's own kernels take their stored schedule knobs (``banana tune``, :mod:`banana.tuning.knobs`)
from here too: the GEMM pass asks :func:`active_gemm_knobs`, and tuned / untuned GEMM kernels are
listed like tasks (the attention kernels by :func:`record_attention_kernels`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm

from banana.compiler.errors import BadConfigError
from banana.tuning.database import META, TuningDatabase, database_dir

logger = logging.getLogger(__name__)

#: PrimFunc attribute of a kernel taken from a tuning record (its measured schedule, kept verbatim)
TUNED_ATTR = "banana.tuned"

_ACTIVE: contextvars.ContextVar[TuningApplied | None] = contextvars.ContextVar("banana_tuning", default=None)


@dataclass
class TuningApplied:
    """What a build took from a tuning database; ``consulted`` is False if the backend never asked."""

    database: str
    soc: str
    backend: str
    records: int
    tuned: list[str] = field(default_factory=list)
    untuned: list[str] = field(default_factory=list)
    consulted: bool = False
    _memory_db: Any = None
    #: ``banana.tuning.gemm_knobs.gemm_key`` -> GemmKnobs stored for this SoC/backend
    gemm_knobs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"database": self.database, "records": self.records, "consulted": self.consulted,
                "tuned_tasks": sorted(self.tuned), "untuned_tasks": sorted(self.untuned)}


@contextlib.contextmanager
def apply_tuning_database(root: Path | str | None, soc_id: str, backend: str) -> Iterator[TuningApplied | None]:
    """Make the records of ``root/soc_id/backend`` available to builds inside the ``with``."""
    if root is None:
        yield None
        return
    root = Path(root)
    if not root.is_dir():
        raise BadConfigError(f"--tuning-db {root}: no such directory")
    directory = database_dir(root, soc_id, backend)
    if (directory / META).is_file():
        db = TuningDatabase.open(root, soc_id, backend, create=False)
        memory = db.pruned_memory_copy()
        count = len(memory)
    else:
        logger.warning("%s: no records for SoC %s, backend %s: every task stays untuned", root, soc_id, backend)
        memory, count = None, 0
    from banana.tuning.gemm_knobs import load_tuned_gemm_knobs

    applied = TuningApplied(str(directory), soc_id, backend, count, _memory_db=memory,
                            gemm_knobs=load_tuned_gemm_knobs(root, soc_id, backend))
    token = _ACTIVE.set(applied)
    try:
        yield applied
    finally:
        _ACTIVE.reset(token)


def apply_active_records(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Replace fused PrimFuncs that have a record in the active database (no-op without one)."""
    applied = _ACTIVE.get()
    if applied is None:
        return mod
    applied.consulted = True
    names = [gv.name_hint for gv, f in mod.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and not f.attrs.get("tirx.is_scheduled", False)]
    if applied._memory_db is not None:
        from tvm import relax

        with target, applied._memory_db:
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    tuned = 0
    for name in names:
        is_tuned = bool(mod[name].attrs.get("tirx.is_scheduled", False))
        if is_tuned:  # measured as it is: later rules (passes.small_kernels) must leave it alone
            mod.update_func(mod.get_global_var(name), mod[name].with_attr(TUNED_ATTR, True))
        tuned += is_tuned
        # the same module lowered again (the report's analysis) lists a task once; tuned wins when the
        # two lowerings differ (an adreno/hexagon report analyses the CPU lowering, which no record matches)
        if is_tuned and name not in applied.tuned:
            applied.tuned.append(name)
            if name in applied.untuned:
                applied.untuned.remove(name)
        elif not is_tuned and name not in applied.untuned and name not in applied.tuned:
            applied.untuned.append(name)
    logger.info("tuning records applied to %d of %d tasks", tuned, len(names))
    return mod


def record_attention_kernels(applied: TuningApplied | None, sites: list[Any], tuned_keys: set[str]) -> None:
    """List banana's fused attention kernels as tuned (knobs from ``banana tune``) or untuned.

    They are ``tirx.is_scheduled``, so :func:`apply_active_records` never names them; ``sites`` are
    the fuse stage's records (``AttentionSite``), ``tuned_keys`` the spec keys that had stored knobs.
    """
    if applied is None or not sites:
        return
    from banana.tuning.knobs import spec_from_site, spec_key

    for site in sites:
        bucket = applied.tuned if spec_key(spec_from_site(site)) in tuned_keys else applied.untuned
        if site.kernel not in bucket:
            bucket.append(site.kernel)


def _list_kernel(applied: TuningApplied, name: str, tuned: bool) -> None:
    """List a banana kernel once, as tuned (stored knobs) or untuned."""
    bucket = applied.tuned if tuned else applied.untuned
    if name not in applied.tuned and name not in applied.untuned:
        bucket.append(name)


def active_gemm_knobs() -> Callable[[int, int, int, bool, bool, str], Any] | None:
    """The GEMM pass's knob lookup for the active tuning database (None without one, or on a backend
    whose GEMM kernels take no knobs); it lists every tunable GEMM kernel as tuned (stored knobs other
    than the default) or untuned (none stored, or the default won: built exactly as without a database)."""
    from banana.tuning.knobs import KNOB_BACKENDS

    applied = _ACTIVE.get()
    if applied is None or applied.backend not in KNOB_BACKENDS:
        return None

    def lookup(m: int, n: int, k: int, transpose_b: bool, bias: bool, name: str) -> Any:
        from banana.tuning.gemm_knobs import GemmSpec, gemm_key

        spec = GemmSpec(m, n, k, transpose_b, bias)
        if not spec.tunable:
            return None
        knobs = applied.gemm_knobs.get(gemm_key(spec))
        _list_kernel(applied, name, knobs is not None)
        return None if knobs is None else (knobs.tile, knobs.k_block)

    return lookup


def apply_records_pass(target: tvm.target.Target) -> tvm.transform.Pass:
    """:func:`apply_active_records` as a module pass, for a backend's lowering pass list."""

    @tvm.transform.module_pass(opt_level=0, name="banana.apply_tuning_records")
    def _apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return apply_active_records(mod, target)

    return _apply
