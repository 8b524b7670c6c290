"""End to end on the host backend: compile, verify against onnxruntime, tamper detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from banana.compiler.artifact import Artifact
from banana.compiler.cli import main
from banana.compiler.errors import ArtifactError
from banana.compiler.pipeline import compile_model
from banana.compiler.verify import compare, onnxruntime_outputs, quantisation_steps, random_inputs, verify_artifact


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.conftest import make_mlp_model

    directory = tmp_path_factory.mktemp("host")
    model = make_mlp_model(directory / "mlp.onnx")
    out = directory / "artifact"
    result = compile_model(model, backend="host", out=out, verify=True)
    assert result.verify is not None and result.verify.ok
    return model, out


def test_manifest_describes_the_build(host_artifact: tuple[Path, Path]) -> None:
    model, out = host_artifact
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "host"
    assert manifest["inputs"] == [{"name": "x", "shape": [2, 8, 16], "dtype": "float32"}]
    assert manifest["outputs"][0]["shape"] == [2, 8, 32]
    assert manifest["model"]["path"] == str(model.resolve())
    assert {f["path"] for f in manifest["files"]} == {"model.so", "weights.params", "report.json", "report.md",
                                                      "report.html"}
    assert manifest["target"]["kind"] == "llvm"
    assert "apache-tvm" in manifest["tools"]


def test_outputs_match_onnxruntime(host_artifact: tuple[Path, Path]) -> None:
    model, out = host_artifact
    artifact = Artifact.open(out)
    inputs = random_inputs(artifact.inputs, seed=3)
    from banana.targets.backends import get_backend

    ours = get_backend("host").run(artifact, inputs)
    ref = onnxruntime_outputs(model, artifact.inputs, inputs)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-4, atol=1e-6)


def test_verify_cli_passes_and_reports_errors(host_artifact: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    _, out = host_artifact
    assert main(["verify", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "max rel" in printed and "ok" in printed


def test_verify_mismatch_exits_3(host_artifact: tuple[Path, Path], capsys: pytest.CaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, out = host_artifact
    from banana.targets.backends.host import HostBackend

    original = HostBackend.run
    monkeypatch.setattr(HostBackend, "run", lambda self, a, i: [o + 0.01 for o in original(self, a, i)])
    assert main(["verify", str(out)]) == 3
    assert "differs from onnxruntime" in capsys.readouterr().err


def test_verify_refuses_a_different_model(host_artifact: tuple[Path, Path], tmp_path: Path) -> None:
    from tests.conftest import make_mlp_model

    _, out = host_artifact
    other = make_mlp_model(tmp_path / "other.onnx", seed=1)
    with pytest.raises(ArtifactError, match="not the model this artifact was compiled from"):
        verify_artifact(Artifact.open(out), model_path=other)


def test_quantisation_steps_count_8bit_steps_of_the_reference_range() -> None:
    ref = np.array([-1.0, 0.0, 1.55], dtype=np.float32)  # range 2.55: one step 0.01
    assert quantisation_steps(ref + np.float32(0.025), ref) == pytest.approx(2.5, rel=1e-4)
    assert quantisation_steps(ref, ref) == 0.0


def test_compare_uses_scale_of_reference() -> None:
    ref = np.array([100.0, 0.0, -50.0], dtype=np.float32)
    assert compare("y", ref + 0.005, ref, 1e-4).ok
    assert not compare("y", ref + 0.02, ref, 1e-4).ok
    assert not compare("y", np.array([np.nan, 0, 0], dtype=np.float32), ref, 1e-4).ok


def test_verify_with_given_inputs_and_bad_npz(host_artifact: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    _, out = host_artifact
    good = tmp_path / "in.npz"
    np.savez(good, x=np.ones((2, 8, 16), dtype=np.float32))
    assert main(["verify", str(out), "--inputs", str(good)]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((2, 8), dtype=np.float32))
    assert main(["verify", str(out), "--inputs", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input 'x' has shape (2, 8), expected (2, 8, 16)" in err[0]
