"""Host check of the prediction method on the nano models (looser bound than the ±25 % goal:
the 2-core host is shared, so measured medians move by tens of percent between runs)."""

from __future__ import annotations

import pytest

LOOSE_BOUND_PCT = 60.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nano-dit-random", "nano-unet"])
def test_predicted_host_latency_tracks_measured(name: str) -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "banana_predict_bench", Path(__file__).resolve().parents[3] / "benchmarks" / "predict.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.check(name, repeats=5)
    assert abs(result["error_pct"]) <= LOOSE_BOUND_PCT, result
    assert result["bound_ms"] < result["measured_min_ms"]  # the physical bound really is a lower bound
