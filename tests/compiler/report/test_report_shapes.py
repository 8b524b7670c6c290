"""By-shape projections: K/V traffic with/without GQA and physical bounds from analytic formulas."""

import pytest

from banana.compiler.report.machine import machine_for
from banana.compiler.report.shapes import dit_table, dit_work
from banana.compiler.zoo import DIT_CONFIGS
from banana.targets.soc import load_soc


def test_kv_traffic_gqa_vs_mha_is_the_head_ratio() -> None:
    c = DIT_CONFIGS["1.8b"]
    work = dit_work("1.8b", "512", "fp16")
    tokens = (512 // 8 // c.patch_size) ** 2
    per_block = 2 * (tokens + c.text_tokens) * c.kv_heads * c.head_dim * 2  # K and V, self + cross, fp16
    assert work.kv_bytes_gqa == pytest.approx(c.depth * per_block)
    assert work.kv_bytes_mha / work.kv_bytes_gqa == pytest.approx(c.q_heads / c.kv_heads)


def test_bound_is_flops_over_sourced_peak_for_the_1_8b_dit() -> None:
    soc = load_soc("SM8650")
    rows = dit_table("1.8b", [machine_for(soc, "cpu")], plans=("int8",), resolutions=("512",))
    row = rows[0]
    flops = dit_work("1.8b", "512", "int8").flops
    assert row["bound_ms_per_step"] == pytest.approx(max(flops / 1420.8e9, row["bytes_per_step"] / 76.8e9) * 1e3)
    assert row["bound_ms_per_image"] == pytest.approx(4 * row["bound_ms_per_step"])
    assert row["claims"]["30fps_at_512_physically_possible"] is False
    assert row["predicted_ms_per_step"] >= row["bound_ms_per_step"]
