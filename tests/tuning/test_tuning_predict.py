"""The predict runner: costs candidates from their TIR and the SoC's numbers; tunes arm64 with no
device, and the tuned artifact still verifies under qemu-aarch64 against onnxruntime."""

from __future__ import annotations

import pytest
import tvm
from tvm import s_tir
from tvm.script import tirx as T

from banana.tuning.predict import CoreModel, predict_seconds
from tests.conftest import make_mlp_model


@T.prim_func(s_tir=True)
def _matmul(A: T.Buffer((64, 64), "float32"), B: T.Buffer((64, 64), "float32"), C: T.Buffer((64, 64), "float32")):
    for i, j, k in T.grid(64, 64, 64):
        with T.sblock("C"):
            vi, vj, vk = T.axis.remap("SSR", [i, j, k])
            with T.init():
                C[vi, vj] = T.float32(0)
            C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vk, vj]


MACHINE = CoreModel(cores=4, ghz=3.0, fp32_lanes=4, dram_bytes_per_s=60e9)


def test_parallel_vectorized_schedule_is_predicted_faster_than_the_loop_nest() -> None:
    mod = tvm.IRModule({"main": _matmul})
    naive = predict_seconds(mod, MACHINE)
    sch = s_tir.Schedule(mod)
    i, j, k = sch.get_loops(sch.get_sblock("C"))
    sch.reorder(i, k, j)
    sch.parallel(i)
    jo, ji = sch.split(j, [None, 4])
    sch.vectorize(ji)
    fast = predict_seconds(sch.mod, MACHINE)
    # 64^3 MACs = 2 x 262144 ops: at 3 GHz x 2 issue, the serial nest cannot beat ~87 us
    assert naive > 64**3 * 2 / (2 * 3e9)
    assert fast < naive / 4  # 4 cores x 4 lanes, minus the parallel-region cost


def test_soc_parameters_come_from_the_registry() -> None:
    from banana.targets.soc import load_soc

    soc = load_soc("SM8650")
    machine = CoreModel.from_soc(soc, "cpu")
    assert machine.cores == soc.big_cores and machine.fp32_lanes == 4
    assert machine.dram_bytes_per_s == soc.dram_bandwidth_bytes_per_s


@pytest.mark.slow  # MetaSchedule search + qemu verification: minutes on the shared host
def test_predict_tunes_arm64_without_a_device_and_the_artifact_verifies(tmp_path) -> None:
    from banana.compiler.pipeline import compile_model
    from banana.tuning.tune import tune_model

    model = make_mlp_model(tmp_path / "mlp.onnx")
    report = tune_model(model, backend="cpu", soc="SM8650", trials=8, runner="predict", db_root=tmp_path / "db",
                        trials_per_iter=8)
    assert report.trials_run >= 1 and report.runner == "predict"
    result = compile_model(model, backend="cpu", soc="SM8650", out=tmp_path / "out", tuning_db=tmp_path / "db",
                           verify=True)
    assert result.manifest["tuning"]["tuned_tasks"]
    assert result.verify is not None and result.verify.executed and result.verify.ok


def test_predict_artifacts_live_in_their_own_directory(tmp_path, monkeypatch) -> None:
    """MetaSchedule's RemoveBuildArtifact rmtree()s the artifact's parent: it must never be $TMPDIR."""
    import os
    import tempfile

    from tvm.s_tir import meta_schedule as ms

    from banana.tuning.predict import PredictBuilder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (result,) = PredictBuilder(MACHINE).build([ms.builder.BuilderInput(tvm.IRModule({"main": _matmul}),
                                                                       tvm.target.Target({"kind": "llvm"}))])
    assert result.error_msg is None
    parent = os.path.dirname(result.artifact_path)
    assert os.path.realpath(parent) != os.path.realpath(str(tmp_path))
    assert os.listdir(parent) == ["cost.json"]
