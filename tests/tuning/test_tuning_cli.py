"""`banana tune` / `banana compile --tuning-db`: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import pytest

from banana.compiler.cli import main
from tests.conftest import make_mlp_model


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--backend", "cpu", "--soc", "SM8650", "--runner", "local"], "--runner local measures this machine"),
        (["--backend", "host", "--runner", "rpc://nohost/key"], "rpc://HOST:PORT/KEY"),
        (["--backend", "adreno", "--soc", "SM8650", "--runner", "local"], "--runner local measures this machine"),
    ],
)
def test_tune_rejects_bad_runner_and_backend(tmp_path, capsys, extra: list[str], needle: str) -> None:
    model = make_mlp_model(tmp_path / "m.onnx")
    code = main(["tune", str(model), "--trials", "4", "--db", str(tmp_path / "db"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "db").exists()


def test_compile_with_missing_tuning_db_is_exit_2(tmp_path, capsys) -> None:
    model = make_mlp_model(tmp_path / "m.onnx")
    code = main(["compile", str(model), "--backend", "host", "-o", str(tmp_path / "out"),
                 "--tuning-db", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2 and "--tuning-db" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_compile_with_empty_tuning_db_reports_every_task_untuned(tmp_path, capsys) -> None:
    import json

    model = make_mlp_model(tmp_path / "m.onnx")
    (tmp_path / "db").mkdir()
    assert main(["compile", str(model), "--backend", "host", "-o", str(tmp_path / "out"),
                 "--tuning-db", str(tmp_path / "db")]) == 0
    tuning = json.loads((tmp_path / "out" / "manifest.json").read_text())["tuning"]
    assert tuning["consulted"] and not tuning["tuned_tasks"] and len(tuning["untuned_tasks"]) >= 2
    assert "untuned" in capsys.readouterr().out
