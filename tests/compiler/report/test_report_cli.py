"""Every compile writes the reports (checksummed); `banana report OUT --soc OTHER` re-predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banana.compiler.cli import main
from banana.compiler.pipeline import compile_model
from banana.compiler.report import read_report


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_mlp_model

    directory = tmp_path_factory.mktemp("report")
    out = directory / "artifact"
    compile_model(make_mlp_model(directory / "mlp.onnx"), backend="host", out=out)
    return out


def test_compile_writes_checksummed_reports(artifact: Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert {"report.json", "report.md", "report.html"} <= {f["path"] for f in manifest["files"]}
    report = read_report(artifact / "report.json")
    # MatMul [2,8,16]x[16,32] + Add + Softmax: at least the analytic matmul work is counted
    assert report["latency"]["total_flops"] >= 2 * 2 * 8 * 16 * 32
    assert report["latency"]["kind"] == "predicted"
    per_step = report["latency"]["per_step"]
    assert per_step["bound_ms"] <= per_step["low_ms"] <= per_step["predicted_ms"] <= per_step["high_ms"]
    assert "<svg" in (artifact / "report.html").read_text()


def test_report_cli_repredicts_for_another_soc(artifact: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sm8650"
    code = main(["report", str(artifact), "--soc", "SM8650", "--target-fps", "1e9", "--target-ms", "1e6",
                 "-o", str(out)])
    assert code == 0
    report = read_report(out / "report.json")
    assert report["soc"]["id"] == "SM8650" and report["backend"] == "cpu"
    assert report["targets"]["target_fps"]["physically_possible"] is False  # 1 ns per image: below the bound
    assert report["targets"]["target_ms"]["predicted_feasible"] is True
    assert "PREDICTED" in capsys.readouterr().out


def test_report_rejects_a_tampered_report(artifact: Path, tmp_path: Path) -> None:
    bad = tmp_path / "report.json"
    bad.write_text(json.dumps({"schema_version": 1}))
    from banana.compiler.errors import ArtifactError

    with pytest.raises(ArtifactError, match="report fails its schema"):
        read_report(bad)
