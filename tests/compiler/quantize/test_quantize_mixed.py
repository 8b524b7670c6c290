"""Mixed precision: size accounting, backend capabilities, greedy search and the Pareto front."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from banana.compiler.errors import BadConfigError
from banana.compiler.quantize.calibrate import Calibration
from banana.compiler.quantize.capabilities import supported_pairs
from banana.compiler.quantize.cost import layer_shapes, plan_size
from banana.compiler.quantize.fakequant import LayerPrecision, quantizable_layers
from banana.compiler.quantize.mixed import greedy_search, pareto_front, pick
from banana.compiler.quantize.ranges import activation_ranges


def test_plan_size_counts_codes_scales_and_conversions(nano: torch.nn.Module) -> None:
    layers = quantizable_layers(nano)
    shapes = layer_shapes(nano, {n: 100 for n in layers})
    n_w = sum(nano.get_submodule(n).weight.numel() for n in layers)
    n_all = sum(p.numel() for p in nano.parameters())
    ch = sum(nano.get_submodule(n).weight.shape[0] for n in layers)
    w8 = plan_size(nano, shapes, {n: LayerPrecision("int8", "int8") for n in layers})
    assert w8["model_bytes"] == n_w + 4 * ch + 4 * (n_all - n_w) and w8["conversion_bytes"] == 0
    w4 = plan_size(nano, shapes, {n: LayerPrecision("int4", "int8") for n in layers})
    assert w8["model_bytes"] - w4["model_bytes"] == n_w // 2 and w4["avg_weight_bits"] == 4.0
    mixed = {n: LayerPrecision("int8", "int8" if i != 3 else "fp16") for i, n in enumerate(layers)}
    assert plan_size(nano, shapes, mixed)["conversion_bytes"] == 2 * 100 * (1 + 2)  # into and out of layer 3


def test_backends_declare_what_they_run() -> None:
    assert all(a in ("int8", "int16") for _, a in supported_pairs("hexagon"))
    assert all(a == "fp16" for _, a in supported_pairs("adreno"))
    assert ("int8", "int8") in supported_pairs("cpu") and ("fp16", "fp16") in supported_pairs("cpu")
    with pytest.raises(BadConfigError, match="'npu'"):
        supported_pairs("npu")


def test_pareto_front_drops_dominated_points() -> None:
    pts = [{"model_bytes": 10, "psnr_db": 30.0}, {"model_bytes": 12, "psnr_db": 29.0},
           {"model_bytes": 15, "psnr_db": 35.0}, {"model_bytes": 9, "psnr_db": 20.0}]
    assert [p["model_bytes"] for p in pareto_front(pts)] == [9, 10, 15]


def test_greedy_search_spends_bytes_where_it_helps(nano: torch.nn.Module, nano_cal: Calibration) -> None:
    ranges = activation_ranges(nano_cal, "mse")
    elems = {n: 1 for n in ranges}
    res = greedy_search(nano, nano_cal, ranges, elems, backend="hexagon", weights=("int4", "int8"),
                        acts=("int8",), seeds=range(4))
    assert all(p.weight == "int4" for p in res.path[0].values())
    assert all(p.weight == "int8" for p in res.path[-1].values())
    costs = [s["model_bytes"] for s in res.sizes]
    assert costs == sorted(costs) and np.all(np.diff(res.predicted_psnr) >= -1e-9)
    i = pick(res, max_avg_bits=4.5)
    assert res.sizes[i]["avg_weight_bits"] <= 4.5 < res.sizes[min(i + 1, len(res.sizes) - 1)]["avg_weight_bits"]
    # the first upgrade goes to a layer the PSNR sensitivity marks as among the most sensitive
    first = next(n for n, p in res.path[1].items() if p.weight == "int8")
    ranked = sorted(res.sensitivity, key=res.sensitivity.get)
    assert first in ranked[: len(ranked) // 2]


@pytest.mark.parametrize("backend,upgrade", [("cpu", ("fp16", "fp16")), ("hexagon", ("int8", "int16"))])
def test_search_buys_fp16_or_int16_where_the_backend_offers_them(nano: torch.nn.Module, nano_cal: Calibration,
                                                                 backend: str, upgrade: tuple[str, str]) -> None:
    """Beyond INT4/INT8 weights: the path climbs to the backend's most accurate pair (FP16 on the ARM CPU,
    INT16 activations on Hexagon), each step costing bytes and predicted to gain PSNR."""
    ranges = activation_ranges(nano_cal, "mse")
    res = greedy_search(nano, nano_cal, ranges, {n: 1 for n in ranges}, backend=backend, seeds=range(2))
    pairs = {(p.weight, p.act) for plan in res.path for p in plan.values()}
    assert pairs <= set(supported_pairs(backend))
    assert upgrade in pairs  # the search really chose the wider pair for some layers
    assert any((p.weight, p.act) == upgrade for p in res.path[-1].values())
    assert np.all(np.diff(res.predicted_psnr) >= -1e-9)
    assert res.sizes[-1]["model_bytes"] + res.sizes[-1]["conversion_bytes"] > res.sizes[0]["model_bytes"]
