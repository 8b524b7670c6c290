"""banana's MetaSchedule builder: one worker process kept across batches, recycled without losing builds."""

from __future__ import annotations

import os

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.script import tirx as T

from banana.tuning.builders import PersistentBuilder


@T.prim_func
def _add_one(a: T.Buffer((8,), "float32"), b: T.Buffer((8,), "float32")) -> None:
    for i in range(8):
        b[i] = a[i] + T.float32(1)


def test_builder_keeps_its_worker_and_recycles_it_without_failures() -> None:
    """The stock LocalBuilder starts a new interpreter per batch (its start-up disturbs the runner's
    timing); ours reuses one and replaces it after ``worker_uses`` builds -- which needs psutil."""
    builder = PersistentBuilder(timeout_s=120, worker_uses=2)
    mod = tvm.IRModule({"main": _add_one.with_attr("global_symbol", "main")})
    target = tvm.target.Target({"kind": "llvm"})
    paths = []
    for _ in range(3):
        (result,) = builder.build([ms.builder.BuilderInput(mod, target)])
        assert result.error_msg is None, result.error_msg
        paths.append(result.artifact_path)
    assert all(os.path.isfile(p) for p in paths) and len(set(paths)) == 3
