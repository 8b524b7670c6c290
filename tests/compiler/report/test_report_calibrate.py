"""Calibration on synthetic workloads, and the set-aware reduction-column model it feeds."""

import dataclasses

import pytest

from banana.compiler.report.calibrate import WORKLOADS, _solve, calibrate
from banana.compiler.report.machine import machine_for
from banana.compiler.report.roofline import column_capacity_lines, scalar_mac_cycles
from banana.compiler.report.work import KernelWork, analyze_lowered, lower_for_analysis
from banana.targets.host import host_soc, host_target


def test_column_capacity_counts_the_sets_a_stride_reaches() -> None:
    l2 = 512 * 1024  # 8-way, 64 B lines: 1024 sets
    assert column_capacity_lines(4096, l2) == (1024 // 64) * 8  # 4 KB stride: every 64th set
    assert column_capacity_lines(1600, l2) == 1024 * 8  # 25 lines apart: gcd 1, every set
    assert column_capacity_lines(1536, l2) == (1024 // 8) * 8  # 24 lines apart: gcd 8
    assert column_capacity_lines(16, l2) == 1024 * 8  # contiguous


def _reduction(k: int, n: int, m: int = 4) -> KernelWork:
    return KernelWork(name="mm", flops=2 * m * n * k, bytes_read=4 * (m * k + k * n), bytes_written=4 * m * n,
                      precision="fp32", parallel=True, vectorized=False, out_elems=m * n, reduction=True,
                      largest_input_bytes=4 * k * n, ops_by_class={"par_scalar_red": 2 * m * n * k},
                      stores_by_class={"par_scalar_red": m * n * k})


def test_mac_cost_grows_per_doubling_beyond_the_capacity() -> None:
    c = {"cycles_per_scalar_mac": 3.0, "cycles_per_scalar_mac_per_miss_doubling": 2.0}
    l2 = 512 * 1024
    assert scalar_mac_cycles(_reduction(128, 256), l2, c) == pytest.approx(3.0)  # 128 lines <= 512
    assert scalar_mac_cycles(_reduction(1024, 1024), l2, c) == pytest.approx(3.0 + 2.0 * 3)  # 1024 = 8 x 128
    assert scalar_mac_cycles(_reduction(1280, 400), l2, c) == pytest.approx(3.0)  # odd stride: fits


def test_solve_inverts_a_monotone_piecewise_linear_prediction() -> None:
    def predict(c: float) -> float:
        return max(2.0, 1.0 + 0.5 * c)

    assert _solve(predict, 4.0) == pytest.approx(6.0, rel=1e-9)
    assert _solve(predict, 1.5) == 0.0  # below the floor: the constant cannot explain it


def test_solve_inverts_a_falling_prediction() -> None:
    """Efficiencies: time = work / (peak x efficiency) falls as the efficiency rises."""
    def predict(e: float) -> float:
        return 1.0 + 8.0 / e

    assert _solve(predict, 5.0, 0.01, 4.0) == pytest.approx(2.0, rel=1e-9)
    assert _solve(predict, 2.0, 0.01, 4.0) != _solve(predict, 2.0, 0.01, 4.0)  # beyond reach: nan


def test_calibration_reproduces_its_own_workloads() -> None:
    """The near-empty workloads (fast): each solved constant makes the prediction equal the measured min."""
    machine = machine_for(host_soc(), "host")
    tiny = tuple(w for w in WORKLOADS if w.constant in ("parallel_launch_us", "serial_call_us"))
    calibrated, points = calibrate(machine, host_target(), repeats=5, workloads=tiny)
    assert [p.constant for p in points] == ["parallel_launch_us", "serial_call_us"]
    # a pipeline that runs tiny kernels serially (compiler/passes/small_kernels.py) leaves no parallel
    # launch to time: that point must then say it isolates nothing and keep the stated value
    parallel = analyze_lowered(lower_for_analysis(tiny[0].build(), host_target()))
    if not any(k.parallel for k in parallel.kernels.values()):
        assert not points[0].compute_dominates
        assert calibrated.constants["parallel_launch_us"] == machine.constants["parallel_launch_us"]
        points = points[1:]
    for p in points:
        assert p.compute_dominates, p
        assert 0.05 < p.value < 1000  # microseconds per call: a dispatch, not a bug
        assert calibrated.constants[p.constant].value == pytest.approx(p.value)
        assert "calibrated on this host" in calibrated.constants[p.constant].basis
    # the stated constants that were not calibrated are untouched
    untouched = dataclasses.asdict(calibrated.constants["vector_efficiency"])
    assert untouched == dataclasses.asdict(machine.constants["vector_efficiency"])
