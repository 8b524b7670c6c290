"""`banana quantize`: progress, outputs, schema-checked plan, byte-identical rerun with the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from banana.compiler.cli import main
from banana.compiler.errors import BadConfigError
from banana.compiler.quantize.plan import read_plan, write_plan

ARGS = ["--plan", "w4a8", "--iterations", "6", "--calibration-seeds", "4", "--seed", "1", "--block", "32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cli")
    assert main(["quantize", "zoo:nano-dit", "-o", str(d / "a"), *ARGS]) == 0
    assert main(["quantize", "zoo:nano-dit", "-o", str(d / "b"), *ARGS]) == 0
    return d / "a", d / "b"


def test_outputs_and_progress(runs, capsys) -> None:
    a, _ = runs
    for name in ("model.qdq.onnx", "model.float.onnx", "plan.json", "fidelity.md", "grid.png",
                 *(f"model.step{i}.onnx" for i in range(4))):
        assert (a / name).is_file(), name
    plan = read_plan(a / "plan.json")
    assert plan["steps"] == 4 and len(plan["fidelity"]["seeds"]) == 16
    assert all(lay["weight"] == "int4" and lay["block"] in (0, 32) and len(lay["act_scale"]) == 4
               for lay in plan["layers"])
    assert plan["size"]["avg_weight_bits"] == 4.0
    ort.InferenceSession(str(a / "model.qdq.onnx"), providers=["CPUExecutionProvider"])


def test_same_seed_same_plan_bytes(runs) -> None:
    a, b = runs
    assert (a / "plan.json").read_bytes() == (b / "plan.json").read_bytes()
    assert (a / "model.qdq.onnx").read_bytes() == (b / "model.qdq.onnx").read_bytes()


def test_progress_is_printed(tmp_path: Path, capsys) -> None:
    assert main(["quantize", "zoo:nano-dit", "-o", str(tmp_path / "c"), "--plan", "w8a8", "--iterations", "2",
                 "--calibration-seeds", "2"]) == 0
    err = capsys.readouterr().err
    assert "calibration step 4/4" in err and "dqat iteration 2/2: loss" in err and "PSNR" in err


def test_bad_plan_file_is_rejected(runs, tmp_path: Path) -> None:
    plan = json.loads((runs[0] / "plan.json").read_text())
    plan["layers"][0]["weight"] = "int3"
    with pytest.raises(BadConfigError, match="layers.0.weight"):
        write_plan(plan, tmp_path / "plan.json")
    (tmp_path / "bad.json").write_text(json.dumps(plan))
    with pytest.raises(BadConfigError, match="bad.json"):
        read_plan(tmp_path / "bad.json")


def test_onnx_model_input_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o")]) == 2
    assert "DQAT needs a torch denoiser" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
