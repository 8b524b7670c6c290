"""The bundled reference denoisers through the whole pipeline on every backend.

Golden values: onnxruntime on the exported ONNX model (verify), never banana's own output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banana.compiler.pipeline import compile_model
from banana.targets.hexagon import hvx_instruction_stats

MODELS = ["zoo:nano-dit", "zoo:nano-unet"]


def test_readme_main_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's main job: trained nano DiT -> verified arm64 artifact for SM8650."""
    from banana.compiler.cli import main

    out = tmp_path / "out" / "nano-dit-SM8650"
    assert main(["compile", "zoo:nano-dit", "--soc", "SM8650", "--backend", "cpu", "-o", str(out), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert f"artifact: {out.resolve()}" in printed
    assert "via qemu-aarch64" in printed and "  ok" in printed and "FAIL" not in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["soc"]["id"] == "SM8650" and manifest["target"]["mtriple"] == "aarch64-linux-gnu"


@pytest.mark.parametrize(
    ("model", "backend"),
    [("zoo:nano-dit", "host"), ("zoo:nano-unet", "host"), ("zoo:nano-unet", "cpu")],
)
def test_reference_verifies_against_onnxruntime(model: str, backend: str, tmp_path: Path) -> None:
    result = compile_model(model, backend=backend, soc="SM8650", out=tmp_path / "a", verify=True)
    report = result.verify
    assert report is not None and report.executed
    assert report.executor == ("in-process" if backend == "host" else "qemu-aarch64")
    assert all(c.max_rel <= 1e-4 for c in report.comparisons), report.comparisons
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["model"]["reference"] == model.removeprefix("zoo:")
    assert [i["name"] for i in manifest["inputs"]] == ["latent", "timestep", "text"]


@pytest.mark.parametrize("model", MODELS)
def test_reference_adreno_kernels_run_on_pocl(model: str, tmp_path: Path) -> None:
    result = compile_model(model, backend="adreno", soc="SM8550", out=tmp_path / "a", verify=True)
    assert (tmp_path / "a" / "kernels.cl").read_text().count("__kernel") >= 10
    assert result.verify is not None and result.verify.executed and result.verify.ok


def test_nano_dit_hexagon_assembly_has_hvx(tmp_path: Path) -> None:
    result = compile_model("zoo:nano-dit", backend="hexagon", soc="SM8650", out=tmp_path / "a")
    assert result.manifest["target"]["mcpu"] == "hexagonv75"
    stats = hvx_instruction_stats((tmp_path / "a" / "kernels.s").read_text())
    assert stats["hvx_total"] > 100
    assert stats["hvx_loads"] > 0 and stats["hvx_stores"] > 0
    assert any(k.startswith("hvx.vmpy") for k in stats), sorted(stats)


@pytest.mark.slow
def test_nano_unet_hexagon_assembly_has_hvx(tmp_path: Path) -> None:
    compile_model("zoo:nano-unet", backend="hexagon", soc="SM8550", out=tmp_path / "a")
    stats = hvx_instruction_stats((tmp_path / "a" / "kernels.s").read_text())
    assert stats["hvx_total"] > 100
