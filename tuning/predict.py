"""The ``predict`` runner: cost each candidate with a model of the target SoC, no device needed.

The model reads the candidate's own scheduled TIR (loop nests with their parallel / vectorized
annotations, arithmetic and memory accesses of every store) and the SoC registry's sourced
numbers (big cores and clock, SIMD width, DRAM bandwidth): per store statement a roofline of
compute (ops / (vector lanes x parallel cores x issue width x clock)) against memory traffic
(distinct bytes after reuse in a 32 KiB L1, at L2 bandwidth, DRAM bandwidth when the working
set exceeds the last-level cache), plus a fixed cost per parallel region. It ranks candidates;
absolute times are estimates. Validation against measured host times: benchmarks/predict_runner.py.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

L1_BYTES = 32 * 1024  # assumption: 32-64 KiB L1D on the cores we target; the smaller bound
LLC_BYTES = 4 * 1024 * 1024  # assumption: last-level cache beyond which traffic goes to DRAM
L2_BYTES_PER_CYCLE = 32  # assumption: one 64 B line per 2 cycles per core from L2
ISSUE_WIDTH = 2  # assumption: sustained vector ops per cycle per core
PARALLEL_REGION_S = 3e-6  # assumption: fork/join of TVM's thread pool per parallel loop
CALL_S = 0.3e-6
_ARITH = (tirx.Add, tirx.Sub, tirx.Mul, tirx.Div, tirx.FloorDiv, tirx.FloorMod, tirx.Max, tirx.Min)


@dataclass(frozen=True)
class CoreModel:
    """The machine numbers the cost model needs, from a ``Soc`` (sourced) or assumptions above."""

    cores: int
    ghz: float
    fp32_lanes: int
    dram_bytes_per_s: float

    @classmethod
    def from_soc(cls, soc: Any, backend: str) -> CoreModel:
        big = [c for c in soc.clusters if not c.efficiency] or list(soc.clusters)
        ghz = max(c.max_ghz for c in big)
        cores = soc.big_cores if backend != "host" else sum(c.count for c in big)
        lanes = 4  # 128-bit NEON (arm64 cpu backend)
        if backend == "host":
            feats = set(soc.cpu_features)
            lanes = 16 if "avx512f" in feats else 8 if ("avx2" in feats or "avx" in feats) else 4
        return cls(cores=max(1, int(cores)), ghz=float(ghz) if ghz == ghz else 2.0, fp32_lanes=lanes,
                   dram_bytes_per_s=float(soc.dram_bandwidth_bytes_per_s))


@dataclass
class _Loop:
    var: Any
    extent: int
    kind: Any


def _int(value: Any, default: int = 1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _dtype_bits(buffer: Any) -> int:
    """Element size of a buffer (32 when it cannot be read: fp32 is what we tune)."""
    try:
        return int(tvm.DataType(str(buffer.dtype)).bits)
    except (AttributeError, TypeError, ValueError):
        return 32


def _vars_in(node: Any) -> set[Any]:
    found: set[Any] = set()
    tvm_ffi.structural_walk(node, [(tirx.Var, lambda v: found.add(v))], order="pre")
    return found


class _Walker:
    def __init__(self, machine: CoreModel) -> None:
        self.m = machine
        self.seconds = CALL_S
        self.bindings: dict[Any, set[Any]] = {}

    def visit(self, stmt: Any, loops: list[_Loop]) -> None:
        if isinstance(stmt, tirx.For):
            loop = _Loop(stmt.loop_var, _int(stmt.extent), stmt.kind)
            if stmt.kind == tirx.ForKind.PARALLEL and not any(lp.kind == tirx.ForKind.PARALLEL for lp in loops):
                self.seconds += PARALLEL_REGION_S
            self.visit(stmt.body, [*loops, loop])
        elif isinstance(stmt, tirx.SeqStmt):
            for s in stmt.seq:
                self.visit(s, loops)
        elif isinstance(stmt, s_tir.SBlockRealize):
            for iv, value in zip(stmt.block.iter_vars, stmt.iter_values, strict=False):
                deps: set[Any] = set()
                for v in _vars_in(value):
                    deps |= self.bindings.get(v, {v})
                self.bindings[iv.var] = deps
            self.visit(stmt.block, loops)
        elif isinstance(stmt, s_tir.SBlock):
            if stmt.init is not None:
                self.visit(stmt.init, loops)
            self.visit(stmt.body, loops)
        elif isinstance(stmt, tirx.BufferStore):
            self.store(stmt, loops)
        elif isinstance(stmt, tirx.IfThenElse):
            self.visit(stmt.then_case, loops)
            if stmt.else_case is not None:
                self.visit(stmt.else_case, loops)
        elif hasattr(stmt, "body"):
            self.visit(stmt.body, loops)

    def _deps(self, indices: Any) -> set[Any]:
        deps: set[Any] = set()
        for index in indices:
            for v in _vars_in(index):
                deps |= self.bindings.get(v, {v})
        return deps

    def store(self, store: Any, loops: list[_Loop]) -> None:
        m = self.m
        loads: list[Any] = []
        arith = [0]
        calls = [0]
        tvm_ffi.structural_walk(store.value, [(tvm.ir.TensorLoad, loads.append)], order="pre")
        for kind in _ARITH:
            tvm_ffi.structural_walk(store.value, [(kind, lambda _: arith.__setitem__(0, arith[0] + 1))], order="pre")
        tvm_ffi.structural_walk(store.value, [(tvm.ir.Call, lambda _: calls.__setitem__(0, calls[0] + 1))], order="pre")
        iters = math.prod(lp.extent for lp in loops) if loops else 1
        ops = arith[0] + 10 * calls[0] + len(loads) + 1
        vec = 1
        if loops and loops[-1].kind == tirx.ForKind.VECTORIZED:
            vec = min(loops[-1].extent, m.fp32_lanes)
        par = math.prod(lp.extent for lp in loops if lp.kind == tirx.ForKind.PARALLEL)
        par_speed = par / math.ceil(par / m.cores) if par > 1 else 1.0
        compute_s = iters * ops / vec / par_speed / (ISSUE_WIDTH * m.ghz * 1e9)
        accesses = [(self._deps(ld.indices), _dtype_bits(ld.source)) for ld in loads]
        accesses.append((self._deps(store.indices), _dtype_bits(store.buffer)))
        loop_vars = [lp.var for lp in loops]

        def footprint(level: int) -> float:
            total = 0.0
            for deps, bits in accesses:
                elems = math.prod(loops[j].extent for j in range(level, len(loops)) if loop_vars[j] in deps)
                total += elems * max(1, bits // 8)
            return total

        level = len(loops)
        while level > 0 and footprint(level - 1) <= L1_BYTES:
            level -= 1
        outer = math.prod(loops[j].extent for j in range(level)) if level else 1
        traffic = footprint(level) * outer
        bandwidth = L2_BYTES_PER_CYCLE * m.ghz * 1e9 * par_speed
        if footprint(0) > LLC_BYTES:
            bandwidth = min(bandwidth, m.dram_bytes_per_s)
        self.seconds += max(compute_s, traffic / bandwidth)


def predict_seconds(mod: tvm.IRModule, machine: CoreModel) -> float:
    """Predicted run time of a scheduled single-PrimFunc module on ``machine``."""
    walker = _Walker(machine)
    for _, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            walker.visit(func.body, [])
    return walker.seconds


@derived_object
class PredictBuilder(ms.builder.PyBuilder):
    """'Builds' a candidate by costing it: the artifact is a JSON file with the predicted time."""

    def __init__(self, machine: CoreModel) -> None:
        super().__init__()
        self.machine = machine

    def build(self, build_inputs: list[Any]) -> list[Any]:
        results = []
        for item in build_inputs:
            try:
                seconds = predict_seconds(item.mod, self.machine)
            except Exception as exc:  # noqa: BLE001 - an uncostable candidate is a failed build
                results.append(ms.builder.BuilderResult(None, f"predict: {exc}"))
                continue
            # one directory per artifact: MetaSchedule's RemoveBuildArtifact deletes the artifact's
            # whole parent directory (a bare file in $TMPDIR would take $TMPDIR with it)
            path = os.path.join(tempfile.mkdtemp(prefix="banana-predict-"), "cost.json")
            with open(path, "w") as handle:
                json.dump({"predicted_s": seconds}, handle)
            results.append(ms.builder.BuilderResult(path, None))
        return results


@derived_object
class _DoneFuture(ms.runner.PyRunnerFuture):
    def __init__(self, result: Any) -> None:
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        return self._result


@derived_object
class PredictRunner(ms.runner.PyRunner):
    """Returns the predicted time written by :class:`PredictBuilder` as the candidate's run time."""

    def run(self, runner_inputs: list[Any]) -> list[Any]:
        futures = []
        for item in runner_inputs:
            try:
                with open(item.artifact_path) as handle:
                    seconds = float(json.load(handle)["predicted_s"])
                futures.append(_DoneFuture(ms.runner.RunnerResult([seconds], None)))
            except (OSError, ValueError, KeyError) as exc:
                futures.append(_DoneFuture(ms.runner.RunnerResult(None, f"predict: {exc}")))
        return futures

