"""Side-by-side configurations by shape: K/V traffic, work and thermal figures follow the analytic
formulas of each variant (MHA = kv_heads = q_heads), with no recompilation."""

import math

import pytest

from banana.compiler.report.compare import compare_configurations
from banana.compiler.report.thermal import thermal_params
from banana.compiler.zoo import DIT_CONFIGS
from banana.targets.soc import load_soc


@pytest.fixture(scope="module")
def comparison() -> dict:
    return compare_configurations(load_soc("SM8650"), "some-onnx-model", "1.8b", steps=4)


def _row(comp: dict, attention: str, plan: str, backend: str) -> dict:
    return next(r for r in comp["rows"] if (r["attention"], r["plan"], r["backend"]) == (attention, plan, backend))


def test_every_configuration_is_present(comparison: dict) -> None:
    assert comparison["config"] == "1.8b" and "not a DiT" in comparison["why"]
    keys = {(r["attention"], r["plan"], r["backend"]) for r in comparison["rows"]}
    assert keys == {(a, p, b) for a in ("gqa", "mha") for p in ("fp16", "int8") for b in ("cpu", "adreno", "hexagon")}
    assert all(r["kind"] == "predicted" for r in comparison["rows"])


def test_kv_traffic_follows_the_heads(comparison: dict) -> None:
    c = DIT_CONFIGS["1.8b"]
    tokens = (512 // 8 // c.patch_size) ** 2
    for plan, nbytes in (("fp16", 2), ("int8", 1)):
        gqa, mha = _row(comparison, "gqa", plan, "cpu"), _row(comparison, "mha", plan, "cpu")
        # K and V, self-attention over the image tokens + cross-attention over the text tokens, every block
        expected = c.depth * 2 * (tokens + c.text_tokens) * c.kv_heads * c.head_dim * nbytes
        assert gqa["kv_bytes_per_step"] == pytest.approx(expected)
        assert mha["kv_bytes_per_step"] == pytest.approx(expected * c.q_heads / c.kv_heads)
        assert (mha["kv_heads"], gqa["kv_heads"]) == (c.q_heads, c.kv_heads)
        # MHA has bigger K/V projections: more weights, more work, never faster
        assert mha["weight_bytes"] > gqa["weight_bytes"] and mha["flops_per_step"] > gqa["flops_per_step"]
        assert mha["per_image_ms"] >= gqa["per_image_ms"]


def test_int8_beats_fp16_on_the_cpu_and_thermal_figures_are_the_rc_model(comparison: dict) -> None:
    fp16, int8 = _row(comparison, "gqa", "fp16", "cpu"), _row(comparison, "gqa", "int8", "cpu")
    assert int8["per_image_ms"] < fp16["per_image_ms"]  # 2x sourced peak, half the bytes
    params = thermal_params(load_soc("SM8650"))
    for row in comparison["rows"]:
        assert row["peak_images_per_s"] == pytest.approx(1000.0 / row["per_image_ms"])
        if row["power_w"] * params.r_k_per_w > params.limit_c - params.ambient_c:
            # T(t) = T_amb + P R (1 - exp(-t / tau)) reaches the limit at t = -tau ln(1 - dT / (P R))
            analytic = -params.tau_s * math.log(1 - (params.limit_c - params.ambient_c)
                                                / (row["power_w"] * params.r_k_per_w))
            if analytic < comparison["duration_s"] - 2:
                assert row["time_to_throttle_s"] == pytest.approx(analytic, abs=2.0)
                assert row["steady_images_per_s"] < row["peak_images_per_s"]
        else:
            assert row["time_to_throttle_s"] is None
            assert row["steady_images_per_s"] == pytest.approx(row["peak_images_per_s"])


def test_a_zoo_dit_is_compared_at_its_own_shapes() -> None:
    comp = compare_configurations(load_soc("SM8550"), "zoo:small-dit", "1.8b", steps=2)
    c = DIT_CONFIGS["small"]
    assert comp["config"] == "small" and comp["resolution"] == "native"
    tokens = (c.latent_size // c.patch_size) ** 2
    gqa = _row(comp, "gqa", "fp16", "adreno")
    assert gqa["kv_bytes_per_step"] == pytest.approx(c.depth * 2 * (tokens + c.text_tokens) * c.kv_heads
                                                     * c.head_dim * 2)
