"""`banana report OUT --measure rpc://HOST:PORT/KEY`: a host artifact timed on a device behind a
TVM RPC tracker (tracker and server started here on loopback), and `--measure` on the host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from banana.compiler.cli import main
from banana.compiler.pipeline import compile_model
from banana.compiler.report import read_report
from tests.rpc_loopback import free_port, loopback_rpc_farm

KEY = "banana-report-loopback"


@pytest.fixture(scope="module")
def tracker() -> Iterator[int]:
    """A tracker and one host RPC server behind it (tests/rpc_loopback.py)."""
    pytest.importorskip("tornado")
    with loopback_rpc_farm(KEY) as port:
        yield port


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host artifact whose call takes a measurable time: x[64,256] @ w[256,256] + b, then Softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory = tmp_path_factory.mktemp("rpc")
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((256,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["h2"]),
         helper.make_node("Softmax", ["h2"], ["y"], axis=-1)], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 256])], [w, b])
    model = directory / "linear.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(model))
    out = directory / "artifact"
    compile_model(model, backend="host", out=out)
    return out


@pytest.mark.slow  # the tracker binds only after importing tvm in a worker: 60-90 s on the loaded host
def test_measure_over_rpc_puts_a_device_figure_beside_the_prediction(
        artifact: Path, tracker: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"rpc://127.0.0.1:{tracker}/{KEY}"
    out = tmp_path / "rpc-report"
    assert main(["report", str(artifact), "--measure", url, "-o", str(out)]) == 0
    report = read_report(out / "report.json")
    measured = report["measured"]
    assert measured["kind"] == "measured" and measured["where"] == "rpc" and measured["rpc"] == url
    # 64 x 256 x 256 MACs take tens of microseconds at least on any CPU, and well under a second here
    assert 0.01 < measured["latency_min_ms"] <= measured["latency_ms"] <= measured["latency_max_ms"] < 1000
    assert measured["repeats"] >= 5
    assert report["latency"]["per_step"]["predicted_ms"] > 0  # the prediction stays beside it
    printed = capsys.readouterr().out
    assert f"MEASURED on {url}" in printed
    assert "measured** on rpc" in (out / "report.md").read_text()


def test_measure_on_the_host_and_bad_targets(artifact: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "host-report"
    assert main(["report", str(artifact), "--measure", "-o", str(out)]) == 0
    measured = read_report(out / "report.json")["measured"]
    assert measured["where"] == "host" and measured["latency_ms"] > 0.01
    assert set(measured["per_kernel_ms"]) <= set(read_report(out / "report.json")["work"]["kernels"])
    # an unreachable tracker and a malformed target: one line, exit 2, no partial output
    for bad in (f"rpc://127.0.0.1:{free_port()}/nobody", "tcp://somewhere"):
        target = tmp_path / "bad"
        assert main(["report", str(artifact), "--measure", bad, "-o", str(target)]) == 2
        assert not target.exists()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("banana: error:"), err
