"""MetaSchedule builders for banana: the stock local builder with a lean build function.

The stock ``default_build`` imports every registered tensor intrinsic in each worker process
(12-20 s on this machine) and the stock 30 s timeout is too short on 2 busy cores; banana's
build lowers and compiles the candidate only.
"""

from __future__ import annotations

from typing import Any

BUILD_TIMEOUT_S = 120.0


def lean_build(mod: Any, target: Any, _params: Any) -> Any:
    """Build one scheduled PrimFunc module (no intrinsic registration, no params)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def local_builder(timeout_s: float = BUILD_TIMEOUT_S, workers: int = 1) -> Any:
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(max_workers=workers, timeout_sec=timeout_s, f_build=lean_build)
