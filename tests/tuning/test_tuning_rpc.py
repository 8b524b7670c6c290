"""Tuning through a TVM RPC tracker: tracker + server on loopback, started (and stopped) here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from banana.tuning.runners import parse_runner
from banana.tuning.tune import tune_model
from tests.conftest import make_mlp_model
from tests.rpc_loopback import loopback_rpc_farm

KEY = "banana-loopback"


@pytest.fixture
def rpc_farm() -> Iterator[int]:
    """A tracker and one host RPC server behind it (tests/rpc_loopback.py)."""
    pytest.importorskip("tornado")
    with loopback_rpc_farm(KEY) as port:
        yield port


def test_parse_runner_specs() -> None:
    spec = parse_runner("rpc://127.0.0.1:9190/phone")
    assert (spec.kind, spec.host, spec.port, spec.key) == ("rpc", "127.0.0.1", 9190, "phone")
    assert str(spec) == "rpc://127.0.0.1:9190/phone"
    from banana.compiler.errors import BadConfigError

    for bad in ("rpc://host/key", "rpc://:9190/k", "remote", "rpc://h:1/"):
        with pytest.raises(BadConfigError):
            parse_runner(bad)


@pytest.mark.slow  # ~40 s CPU, minutes of wall time on the shared host
def test_tuning_round_trip_through_loopback_tracker(tmp_path, rpc_farm: int) -> None:
    model = make_mlp_model(tmp_path / "mlp.onnx")
    report = tune_model(model, backend="host", trials=4, db_root=tmp_path / "db",
                        runner=f"rpc://127.0.0.1:{rpc_farm}/{KEY}", trials_per_iter=4)
    assert report.runner == f"rpc://127.0.0.1:{rpc_farm}/{KEY}"
    assert report.trials_run >= 1, report
    timed = [t for t in report.tasks if t.best_ms is not None]
    assert timed and all(0 < t.best_ms < 100 for t in timed)
