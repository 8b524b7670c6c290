"""The host as a Soc: facts read from this machine, measured or derived, never invented."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.target import codegen

from banana.compiler.errors import BadConfigError
from banana.targets.host import (
    _features,
    _read_cpuinfo,
    configure_host_threads,
    host_cores,
    host_soc,
    host_target,
    measure_dram_bandwidth,
)
from banana.targets.soc import cpu_target

CPUINFO = Path("/proc/cpuinfo")


def test_host_soc_numbers_are_positive_and_sourced():
    soc = host_soc()
    assert soc.id == "host" and soc.gpu is None and soc.hexagon is None
    assert soc.total_cores >= 1
    assert soc.clusters[0].max_ghz > 0  # NaN would fail this too
    assert soc.dram_bandwidth_bytes_per_s > 0
    peak = soc.peak_ops_per_s("host", "fp32")
    assert peak is not None and peak > 0
    assert soc.cpu_llvm_mcpu == codegen.llvm_get_system_cpu()
    for path, fact in soc.facts.items():
        assert fact.source.strip(), path
    assert soc.facts["memory.dram_bandwidth_bytes_per_s"].source.startswith("measured on this host")
    assert soc.peak[("host", "fp32")].source.startswith("derived:")
    assert soc.peak[("host", "fp32")].verified is False  # FMA pipe count is an assumption


def test_host_peak_is_cores_x_clock_x_lanes_x_ops():
    soc = host_soc()
    cluster = soc.clusters[0]
    lanes = 16 if "avx512f" in soc.cpu_features else 8 if "avx" in soc.cpu_features else 4
    ops = 4 if "fma" in soc.cpu_features or soc.cpu_arch in ("aarch64", "arm64") else 2
    expected = cluster.count * cluster.max_ghz * 1e9 * lanes * ops
    assert math.isclose(soc.peak_ops_per_s("host", "fp32"), expected, rel_tol=1e-12)


@pytest.mark.skipif(not CPUINFO.exists(), reason="needs /proc/cpuinfo")
def test_host_features_match_proc_cpuinfo():
    text = CPUINFO.read_text()
    flag_line = next(line for line in text.splitlines() if line.startswith(("flags", "Features")))
    flags = set(flag_line.split(":", 1)[1].split())
    soc = host_soc()
    if flag_line.startswith("flags"):
        for name in ("avx", "avx2", "fma", "avx512f"):
            assert (name in soc.cpu_features) == (name in flags), name
    assert not set(soc.cpu_features) & set(soc.cpu_features_absent)


def test_arm_hwcap_names_map_to_plain_feature_names(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nFeatures\t: fp asimd asimdhp asimddp i8mm bf16\nCPU part\t: 0xd4e\n\n"
        "processor\t: 1\nFeatures\t: fp asimd asimdhp asimddp i8mm bf16\n"
    )
    blocks = _read_cpuinfo(cpuinfo)
    assert len(blocks) == 2
    present, absent, _ = _features(blocks)
    assert set(present) == {"neon", "fp16", "dotprod", "i8mm", "bf16"}
    assert {"sve", "sve2", "sme"} <= set(absent)


def test_dram_bandwidth_is_measured_once_per_process():
    assert measure_dram_bandwidth() is measure_dram_bandwidth()
    assert host_soc() is host_soc()


def test_host_target_builds_and_runs():
    spec = host_target()
    assert spec == {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count()}
    a = te.placeholder((64,), "float32", name="a")
    b = te.compute((64,), lambda i: a[i] * 2.0 + 1.0, name="b")
    ex = tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), target=tvm.target.Target(spec))
    x = np.arange(64, dtype="float32")
    out = tvm.runtime.tensor(np.zeros(64, dtype="float32"))
    ex["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_allclose(out.numpy(), x * 2.0 + 1.0)


def test_cpu_target_refuses_the_host():
    if host_soc().cpu_arch == "aarch64":
        pytest.skip("host is arm64")
    with pytest.raises(BadConfigError, match="host_target"):
        cpu_target(host_soc())


def _fake_topology(root: Path, cpus: dict[int, tuple[str, str] | None]) -> Path:
    for cpu, ids in cpus.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        if ids is not None:
            (topology / "physical_package_id").write_text(ids[0] + "\n")
            (topology / "core_id").write_text(ids[1] + "\n")
    return root


def test_host_cores_counts_smt_siblings_once(tmp_path):
    sysfs = _fake_topology(tmp_path, {0: ("0", "0"), 1: ("0", "1"), 2: ("0", "0"), 3: ("0", "1")})
    assert host_cores({0, 1, 2, 3}, sysfs) == 2
    assert host_cores({0, 2}, sysfs) == 1  # an affinity set of two siblings is one core


def test_host_cores_counts_cpus_without_topology(tmp_path):
    sysfs = _fake_topology(tmp_path, {0: None, 1: None, 2: ("0", "0")})
    assert host_cores({0, 1, 2}, sysfs) == 3


def test_configure_host_threads_keeps_the_users_choice(monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    assert configure_host_threads() == 3
    monkeypatch.delenv("TVM_NUM_THREADS")
    assert configure_host_threads() == host_cores()
    assert os.environ["TVM_NUM_THREADS"] == str(host_cores())


def test_compiled_models_run_on_every_core_of_this_host(tmp_path):
    """TVM alone starts logical CPUs / 2 threads on x86; an artifact run through banana uses every core."""
    import subprocess
    import sys

    code = ("import numpy as np, tvm\n"
            "from banana.targets.host import configure_host_threads\n"
            "configure_host_threads()\n"
            "print(tvm.get_global_func('runtime.NumThreads')())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    assert int(out.stdout.split()[-1]) == host_cores()
