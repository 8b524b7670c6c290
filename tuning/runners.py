"""Runner specs -> MetaSchedule runners: ``local`` (this machine), ``rpc://HOST:PORT/KEY`` (a TVM
RPC tracker with devices behind it) and ``predict`` (no device: a cost model of the SoC)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from banana.compiler.errors import BadConfigError

logger = logging.getLogger(__name__)

RUN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RunnerSpec:
    kind: str  # "local" | "rpc" | "predict"
    host: str | None = None
    port: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        if self.kind == "rpc":
            return f"rpc://{self.host}:{self.port}/{self.key}"
        return self.kind


def parse_runner(text: str) -> RunnerSpec:
    """``local`` | ``predict`` | ``rpc://HOST:PORT/KEY``; anything else is a BadConfigError."""
    if text in ("local", "predict"):
        return RunnerSpec(text)
    if text.startswith("rpc://"):
        url = urlparse(text)
        key = url.path.strip("/")
        try:
            port = url.port
        except ValueError:
            port = None
        if url.hostname and port and key:
            return RunnerSpec("rpc", url.hostname, port, key)
    raise BadConfigError(f"--runner '{text}': expected local, predict or rpc://HOST:PORT/KEY")


def evaluator_config() -> Any:
    """3 timed repeats of >= 20 ms each: the median-ish MetaSchedule sees is stable enough to rank."""
    from tvm.s_tir import meta_schedule as ms

    return ms.runner.EvaluatorConfig(number=1, repeat=3, min_repeat_ms=20, enable_cpu_cache_flush=False)


def check_runner(spec: RunnerSpec, backend: str) -> None:
    """Refuse combinations that cannot work before any expensive step: local only times ``host``."""
    if spec.kind == "local" and backend != "host":
        raise BadConfigError(f"--runner local measures this machine: it cannot time backend '{backend}' "
                             "(use rpc://HOST:PORT/KEY or predict)")


def make_runner(spec: RunnerSpec, backend: str, soc: Any = None, target: Any = None) -> Any:
    """The MetaSchedule runner for ``spec``; the local runner only measures the ``host`` backend."""
    from tvm.s_tir import meta_schedule as ms

    check_runner(spec, backend)
    if spec.kind == "local":
        from banana.targets.host import configure_host_threads

        configure_host_threads()  # the runner's worker processes inherit it: time candidates on every core
        return ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S, evaluator_config=evaluator_config())
    if spec.kind == "rpc":
        config = ms.runner.RPCConfig(tracker_host=spec.host, tracker_port=spec.port, tracker_key=spec.key,
                                     session_timeout_sec=int(RUN_TIMEOUT_S))
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator_config(),
                                   max_workers=1)
    if spec.kind == "predict":
        from banana.tuning.predict import PredictRunner

        return PredictRunner()
    raise BadConfigError(f"--runner '{spec}': unknown runner kind")
