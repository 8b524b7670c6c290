"""Bad input: one clear line naming the problem, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from onnx import helper

from banana.compiler.cli import main
from tests.conftest import make_mlp_model, relocate_external_data


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_clean_failure(code: int, err: str, out_dir: Path, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("banana: error:")
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists()
    assert not any(p.name.startswith(f".{out_dir.name}.") for p in out_dir.parent.iterdir())


def test_truncated_model(tmp_path: Path, mlp_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "truncated.onnx"
    broken.write_bytes(mlp_onnx.read_bytes()[:60])
    out = tmp_path / "out"
    code, _, err = _run(["compile", str(broken), "--backend", "host", "-o", str(out)], capsys)
    _assert_clean_failure(code, err, out, "truncated.onnx")


def test_not_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.onnx"
    path.write_text("hello")
    out = tmp_path / "out"
    code, _, err = _run(["compile", str(path), "--backend", "host", "-o", str(out)], capsys)
    _assert_clean_failure(code, err, out, "model.onnx")


def test_unknown_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_mlp_model(tmp_path / "odd.onnx", extra_nodes=[helper.make_node("Bogus", ["y"], ["z"], name="n7")])
    out = tmp_path / "out"
    code, _, err = _run(["compile", str(path), "--backend", "host", "-o", str(out)], capsys)
    _assert_clean_failure(code, err, out, "'n7'", "Bogus")


def test_missing_external_data(mlp_external_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (mlp_external_onnx.parent / "mlp.onnx.data").unlink()
    out = tmp_path / "out"
    code, _, err = _run(["compile", str(mlp_external_onnx), "--backend", "host", "-o", str(out)], capsys)
    _assert_clean_failure(code, err, out, "mlp.onnx.data", "not found")


def test_escaping_external_data(mlp_external_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    relocate_external_data(mlp_external_onnx, "../../etc/passwd")
    out = tmp_path / "out"
    code, _, err = _run(["compile", str(mlp_external_onnx), "--backend", "host", "-o", str(out)], capsys)
    _assert_clean_failure(code, err, out, "escapes the model folder")


def test_shape_override_wrong_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_mlp_model(tmp_path / "dyn.onnx", batch="batch")
    out = tmp_path / "out"
    code, _, err = _run(["compile", str(path), "--backend", "host", "-o", str(out), "--shape", "x=1,8"], capsys)
    _assert_clean_failure(code, err, out, "'x'", "rank 3")


def test_unknown_soc(mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = _run(["compile", str(mlp_onnx), "--soc", "SM9999", "--backend", "cpu", "-o", str(out)], capsys)
    _assert_clean_failure(code, err, out, "SM9999", "SM8650")


def test_unknown_backend(mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["compile", str(mlp_onnx), "--soc", "SM8650", "--backend", "npu", "-o", str(out)])
    err = capsys.readouterr().err
    assert info.value.code == 2
    _assert_clean_failure(2, err, out, "npu")


def test_console_script_one_line_exit_2(tmp_path: Path) -> None:
    """The installed `banana` entry point itself, as a user runs it."""
    banana = Path(sys.executable).parent / "banana"
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(banana), "compile", str(tmp_path / "missing.onnx"), "--backend", "host", "-o", str(out)],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"banana: error: {tmp_path / 'missing.onnx'}: no such file"]
    assert not out.exists()
