"""Tuning through a TVM RPC tracker: tracker + server on loopback, started (and stopped) here."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from banana.tuning.runners import parse_runner
from banana.tuning.tune import tune_model
from tests.conftest import make_mlp_model

KEY = "banana-loopback"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _query_tracker(port: int) -> str:
    from tvm import rpc

    return str(rpc.connect_tracker("127.0.0.1", port).text_summary())


@pytest.fixture
def rpc_farm() -> Iterator[int]:
    """A tracker and one host RPC server behind it, each bounded by `timeout` so they end by themselves."""
    pytest.importorskip("tornado")
    port = _free_port()
    procs = [subprocess.Popen(["timeout", "600", sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(port), "--port-end", str(port + 1)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _query_tracker(port)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        server_port = _free_port()
        procs.append(subprocess.Popen(["timeout", "600", sys.executable, "-m", "tvm.exec.rpc_server",
                                       "--host", "127.0.0.1", "--port", str(server_port),
                                       "--port-end", str(server_port + 1), "--tracker", f"127.0.0.1:{port}",
                                       "--key", KEY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        while KEY not in _query_tracker(port):
            if time.monotonic() > deadline:
                raise TimeoutError("RPC server did not register with the tracker")
            time.sleep(0.3)
        yield port
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


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
