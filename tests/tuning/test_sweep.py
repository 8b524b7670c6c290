"""`banana sweep`: multi-worker studies on SQLite and a real PostgreSQL server lose and duplicate no trial.

The sweeps here run the real pipeline (compile, report, onnxruntime sampling for fidelity) on a
tiny ONNX denoiser so that two worker processes finish in seconds; the front is re-derived here
from the stored trial values, independently of banana's own Pareto code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from banana.compiler.cli import main
from banana.tuning.sweep_pareto import validate_pareto
from tests.tuning.postgres import missing_reason, postgres_server
from tests.tuning.sweep_models import make_tiny_denoiser

SPACE = '{"fuse": [true, false], "steps": [1, 2, 3, 4], "tuning_trials": [0]}'  # 8 configurations
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model and one cache for the module: the second sweep reuses the first one's artifacts."""
    root = tmp_path_factory.mktemp("sweep")
    return {"root": root, "model": make_tiny_denoiser(root / "tiny.onnx"), "cache": root / "cache"}


def _sweep(env: dict[str, Path], out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "banana.compiler.cli", "sweep", str(env["model"]), "--backend", "host",
           "--space", SPACE, "--out", str(out), "--cache", str(env["cache"]), *extra]
    environ = {**os.environ, "TMPDIR": str(env["root"]), "BANANA_CACHE": str(env["root"] / "banana-cache")}
    return subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{err[-4000:]}"
    return out


def _oriented(values: list[float]) -> tuple[float, float, float]:
    return values[0], -values[1], values[2]  # latency min, PSNR max, bytes min


def _independent_front(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    front = set()
    for t in trials:
        a = _oriented(t.values)
        dominated = False
        for o in trials:
            b = _oriented(o.values)
            if o is not t and all(x <= y for x, y in zip(b, a, strict=True)) and b != a:
                dominated = True
        if not dominated:
            front.add(t.number)
    return front


def _check_study(out: Path, storage: str, trials: int, workers_min: int = 1) -> list[optuna.trial.FrozenTrial]:
    document = json.loads((out / "pareto.json").read_text())
    validate_pareto(document, "pareto.json")
    study = optuna.load_study(study_name=document["study"], storage=storage)
    all_trials = study.get_trials()
    assert len(all_trials) == trials, [(t.number, t.state) for t in all_trials]
    assert sorted(t.number for t in all_trials) == list(range(trials))
    assert all(t.state == TrialState.COMPLETE for t in all_trials), [(t.number, t.user_attrs) for t in all_trials]
    configs = [tuple(sorted(t.params.items())) for t in all_trials]
    assert len(set(configs)) == trials, configs  # no configuration run twice
    for t in all_trials:
        assert t.values[0] > 0 and t.values[2] > 0 and Path(t.user_attrs["artifact"], "manifest.json").is_file()
        # the objectives are the steps' multiple of one call's predicted latency
        assert t.values[0] == pytest.approx(t.user_attrs["latency_ms_per_step"] * t.params["steps"])
    assert {r["number"] for r in document["front"]} == _independent_front(all_trials)
    assert document["trials"] == {"requested": trials, "complete": trials, "failed": 0, "running": 0, "other": 0}
    assert len({t.user_attrs["worker"] for t in all_trials}) >= workers_min
    from PIL import Image

    with Image.open(out / "pareto.png") as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
    assert (out / "pareto.md").read_text().count("\n| ") == len(document["front"]) + 1
    return all_trials


def _check_dashboard_reads(storage: str, study_name: str, trials: int) -> None:
    """optuna-dashboard's own API (WSGI, no server) lists the study with its 3 named objectives."""
    dashboard = pytest.importorskip("optuna_dashboard")
    import io

    app = dashboard.wsgi(storage)

    def get(path: str) -> dict:
        status: list[str] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "wsgi.input": io.BytesIO(),
                   "wsgi.errors": sys.stderr, "SERVER_NAME": "localhost", "SERVER_PORT": "80",
                   "wsgi.url_scheme": "http"}
        body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
        assert status[0].startswith("200"), (path, status, body[:500])
        return json.loads(body)

    (summary,) = [s for s in get("/api/studies")["study_summaries"] if s["study_name"] == study_name]
    detail = get(f"/api/studies/{summary['study_id']}")
    assert detail["directions"] == ["minimize", "maximize", "minimize"]
    assert detail["objective_names"] == ["latency_ms", "psnr_db", "artifact_bytes"]
    assert len(detail["trials"]) == trials and all(len(t["values"]) == 3 for t in detail["trials"])


def _sweep_here(env: dict[str, Path], out: Path, monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """`banana sweep` in this process (worker 0 runs here, workers 1..K-1 are child processes)."""
    monkeypatch.setenv("TMPDIR", str(env["root"]))
    monkeypatch.setenv("BANANA_CACHE", str(env["root"] / "banana-cache"))
    code = main(["sweep", str(env["model"]), "--backend", "host", "--space", SPACE, "--out", str(out),
                 "--cache", str(env["cache"]), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-4000:]
    return captured.out


def test_sweep_two_workers_sqlite(sweep_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = sweep_env["root"] / "sqlite"
    start = time.perf_counter()
    stdout = _sweep_here(sweep_env, out, monkeypatch, capsys, "--trials", "5", "--workers", "2")
    trials = _check_study(out, f"sqlite:///{out / 'sweep.db'}", 5)
    assert "Pareto front" in stdout and "5 complete, 0 failed" in stdout
    _check_dashboard_reads(f"sqlite:///{out / 'sweep.db'}", json.loads((out / "pareto.json").read_text())["study"], 5)
    print(f"sqlite sweep, 2 workers, 5 trials: {time.perf_counter() - start:.1f} s; "
          f"workers {sorted({t.user_attrs['worker'] for t in trials})}")


@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_sweep_two_workers_postgres_and_a_later_command_joins(sweep_env: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """2 worker processes on a real PostgreSQL server; the same command again joins the finished study
    (runs nothing, reports the same front); a different sweep under the same name is refused."""
    with postgres_server() as url:
        start = time.perf_counter()
        name = "pg-test"
        _sweep_here(sweep_env, sweep_env["root"] / "pg-a", monkeypatch, capsys, "--trials", "6", "--workers", "2",
                    "--storage", url, "--study-name", name)
        trials = _check_study(sweep_env["root"] / "pg-a", url, 6)
        assert not (sweep_env["root"] / "pg-a" / "sweep.db").exists()  # PostgreSQL, not the default SQLite
        elapsed = time.perf_counter() - start
        _sweep_here(sweep_env, sweep_env["root"] / "pg-b", monkeypatch, capsys, "--trials", "6", "--workers", "2",
                    "--storage", url, "--study-name", name)
        _check_study(sweep_env["root"] / "pg-b", url, 6)
        front = [json.loads((sweep_env["root"] / d / "pareto.json").read_text())["front"] for d in ("pg-a", "pg-b")]
        assert front[0] == front[1]
        code = main(["sweep", str(sweep_env["model"]), "--backend", "host", "--space", '{"steps": [1, 2]}',
                     "--out", str(sweep_env["root"] / "pg-c"), "--trials", "2", "--storage", url,
                     "--study-name", name])
        err = capsys.readouterr().err
        assert code == 2 and "belongs to another sweep (differs in space)" in err, err
        assert not (sweep_env["root"] / "pg-c").exists()
        print(f"postgres sweep, 2 workers, 6 trials: {elapsed:.1f} s; "
              f"workers {sorted({t.user_attrs['worker'] for t in trials})}")


@pytest.mark.slow
@pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
def test_sweep_postgres_two_commands_at_once_share_one_study(sweep_env: dict[str, Path],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Two `banana sweep` commands started together (as on two machines: a separate process, and this one
    with 2 workers) share one study on PostgreSQL: 7 trials in total, none lost or repeated."""
    with postgres_server() as url:
        name = "pg-join-test"
        other = _sweep(sweep_env, sweep_env["root"] / "pg-y", "--trials", "7", "--workers", "1",
                       "--storage", url, "--study-name", name)
        try:
            _sweep_here(sweep_env, sweep_env["root"] / "pg-x", monkeypatch, capsys, "--trials", "7", "--workers", "2",
                        "--storage", url, "--study-name", name)
        finally:
            _finish(other)
        trials = _check_study(sweep_env["root"] / "pg-x", url, 7)
        _check_study(sweep_env["root"] / "pg-y", url, 7)
        # which worker took which trial depends on start-up times (a warm cache makes trials instant)
        print(f"workers {sorted({t.user_attrs['worker'] for t in trials})}")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--backend", "cpu", "--soc", "SM9999"], "unknown SoC 'SM9999'"),
        (["--backend", "host", "--storage", "mysql://u@h/db"], "--storage mysql://u@h/db"),
        (["--backend", "host", "--storage", "postgresql://postgres:secret@127.0.0.1:1/nope"], "cannot open"),
        (["--backend", "host", "--space", '{"steps": [0]}'], "--space: field steps.0"),
        (["--backend", "host", "--space", '{"precision": ["w8a8"]}'], "only zoo:NAME models can be quantized"),
        (["--backend", "host", "--trials", "99"], "only 8 distinct configurations"),
        (["--backend", "host", "--workers", "0"], "--workers 0"),
        (["--backend", "adreno", "--soc", "SM8650", "--latency", "measured"], "--latency measured"),
    ],
)
def test_sweep_bad_input_is_one_line_exit_2_and_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           extra: list[str], needle: str) -> None:
    model = make_tiny_denoiser(tmp_path / "tiny.onnx")
    out = tmp_path / "out"
    args = ["sweep", str(model), "--out", str(out), "--trials", "2", "--space", SPACE, *extra]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert "secret" not in err
    assert not out.exists()


@pytest.mark.slow
def test_sweep_nano_dit_quantized_and_tuned_on_cpu(tmp_path: Path) -> None:
    """The real model: w8a8 DQAT plans (PTQ here), predict-runner tuning, SM8650 cpu backend, 2 workers."""
    env = {"root": tmp_path, "model": Path("zoo:nano-dit"), "cache": tmp_path / "cache"}
    space = ('{"precision": ["fp32", "w8a8"], "fuse": [true], "steps": [2], "tuning_trials": [0, 8], '
             '"dqat_iterations": [0], "calibration_seeds": [8]}')
    out = tmp_path / "nano"
    cmd = [sys.executable, "-m", "banana.compiler.cli", "sweep", "zoo:nano-dit", "--backend", "cpu", "--soc", "SM8650",
           "--space", space, "--out", str(out), "--cache", str(env["cache"]), "--trials", "4", "--workers", "2"]
    environ = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(cmd, cwd=REPO, env=environ, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-4000:]
    trials = {(t.params["precision"], t.params["tuning_trials"]): t
              for t in _check_study(out, f"sqlite:///{out / 'sweep.db'}", 4)}
    fp32, w8 = trials[("fp32", 0)], trials[("w8a8", 0)]
    assert w8.values[2] < 0.75 * fp32.values[2]  # int8 weights ship smaller
    assert 25.0 < w8.user_attrs["psnr_same_steps_db"] < 99.0
    # onnxruntime on the exported QDQ graphs agrees with the quantizer's own torch fake-quant fidelity
    assert w8.user_attrs["psnr_same_steps_db"] == pytest.approx(w8.user_attrs["quantizer_psnr_db"], abs=1.5)
    assert fp32.values[1] == 99.0  # steps == reference steps: the float graphs reproduce the float samples
    assert "tuned" in trials[("fp32", 8)].user_attrs["latency_source"]
    assert Path(trials[("w8a8", 8)].user_attrs["tuning_db"]).is_dir()


def test_not_a_denoiser_onnx_is_rejected_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import make_mlp_model

    for model in (make_mlp_model(tmp_path / "mlp.onnx"), tmp_path / "garbage.onnx"):
        if not model.exists():
            model.write_bytes(b"not onnx at all")
        code = main(["sweep", str(model), "--backend", "host", "--trials", "1", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and str(model) in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "out").exists()


def test_a_trial_that_raises_is_recorded_as_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Failure handling only (the pipeline is replaced by an error): FAIL with the message, none lost."""
    import banana.tuning.sweep as sweep

    def broken(ctx: object, params: dict) -> None:
        raise RuntimeError(f"boom at steps={params['steps']}")

    monkeypatch.setattr(sweep, "evaluate", broken)
    model = make_tiny_denoiser(tmp_path / "tiny.onnx")
    result = sweep.run_sweep(sweep.SweepConfig(model=str(model), backend="host", trials=3, out=tmp_path / "out",
                                               space=SPACE, cache_dir=tmp_path / "cache"))
    assert result.document["trials"] == {"requested": 3, "complete": 0, "failed": 3, "running": 0, "other": 0}
    assert result.document["front"] == []
    study = optuna.load_study(study_name=result.plan.study_name, storage=result.plan.storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert all(t.user_attrs["error"].startswith("RuntimeError: boom at steps=") for t in study.trials)
    assert (tmp_path / "out" / "pareto.png").is_file()
