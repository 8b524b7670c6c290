"""MetaSchedule builders for banana: a lean build function in one long-lived worker process.

The stock ``default_build`` imports every registered tensor intrinsic in each worker process
(12-20 s on this machine) and the stock 30 s timeout is too short on 2 busy cores; banana's
build lowers and compiles the candidate only.

Why not the stock ``LocalBuilder``: it starts a fresh worker process for every batch and retires
it afterwards, and the new Python interpreter importing TVM keeps a core at 100 % for ~0.5 s *after*
``build`` returns -- exactly while the runner times the candidate. With the thread pool sized to
every core (:func:`banana.targets.host.configure_host_threads`) a parallel kernel's join then waits
a scheduler tick for its descheduled worker: nano DiT's 16x256x128 GEMM timed 4.0 ms instead of
11 us, so the search ranked process start-ups, not schedules. :class:`PersistentBuilder` keeps one
worker across batches and replaces it only every :data:`WORKER_USES` builds (stock reason for
retiring workers: memory growth), at the start of a build, so the start-up is over before the
runner starts.
"""

from __future__ import annotations

from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.builder import local_builder as stock
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

BUILD_TIMEOUT_S = 120.0
#: builds per worker process before it is replaced (bounds the stock builder's memory-growth concern)
WORKER_USES = 64


def lean_build(mod: Any, target: Any, _params: Any) -> Any:
    """Build one scheduled PrimFunc module (no intrinsic registration, no params)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


@derived_object
class PersistentBuilder(PyBuilder):
    """``LocalBuilder``'s build in worker processes that outlive a batch (see the module docstring)."""

    def __init__(self, timeout_s: float = BUILD_TIMEOUT_S, workers: int = 1, worker_uses: int = WORKER_USES) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.pool = PopenPoolExecutor(max_workers=workers, timeout=timeout_s, maximum_process_uses=worker_uses)

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        jobs = [(lean_build, None, b.mod, b.target, stock._serialize_params(b.params)) for b in build_inputs]
        results: list[BuilderResult] = []
        for done in self.pool.map_with_error_catching(lambda job: stock._worker_func(*job), jobs):
            if done.status == StatusKind.COMPLETE:
                results.append(BuilderResult(done.value, None))
            elif done.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {self.timeout_s} seconds"))
            else:
                results.append(BuilderResult(None, f"LocalBuilder: An exception occurred\n{done.value}"))
        return results


def local_builder(timeout_s: float = BUILD_TIMEOUT_S, workers: int = 1) -> Any:
    return PersistentBuilder(timeout_s, workers)
