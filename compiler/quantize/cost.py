"""Size accounting of a plan: weight bytes (codes + scales), and precision-conversion bytes.

``model_bytes`` is what ships: each layer's weight codes at their bit width, one float32 scale per
channel (or block), float32 biases, and every parameter outside the quantized layers in float32.
``conversion_bytes`` is the cost of changing activation format between neighbouring layers (in
execution order): each boundary where the activation format changes re-reads and re-writes the
tensor once per denoiser call. The search budget is ``model_bytes + conversion_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from banana.compiler.quantize.fakequant import BITS, LayerPrecision, quantizable_layers

ACT_BYTES = {"int8": 1, "int16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class LayerShape:
    name: str
    n_out: int
    k_in: int
    bias: int
    act_elems: int  # input activation elements per call (batch 1)


def layer_shapes(model: nn.Module, act_elems: dict[str, int]) -> list[LayerShape]:
    out = []
    for name in quantizable_layers(model):
        m = model.get_submodule(name)
        w = m.weight
        out.append(LayerShape(name, int(w.shape[0]), int(w[0].numel()),
                              int(m.bias.numel()) if m.bias is not None else 0, int(act_elems.get(name, 0))))
    return out


def weight_bytes(shape: LayerShape, p: LayerPrecision) -> int:
    bits = BITS[p.weight]
    codes = shape.n_out * shape.k_in * bits // 8
    groups = shape.k_in // p.block if (p.weight == "int4" and p.block and p.block < shape.k_in) else 1
    scales = 4 * shape.n_out * groups if p.weight in ("int4", "int8") else 0
    return codes + scales + 4 * shape.bias


def plan_size(model: nn.Module, shapes: list[LayerShape], plan: dict[str, LayerPrecision]) -> dict[str, float]:
    """``model_bytes``, ``conversion_bytes``, ``avg_weight_bits`` (over quantized-layer weights)."""
    fp32 = LayerPrecision("fp32", "fp32")
    names = {s.name for s in shapes}
    other = sum(p.numel() for n, p in model.named_parameters() if n.rsplit(".", 1)[0] not in names)
    total = 4 * other
    bits = weights = conv = 0
    prev = None
    for s in shapes:
        p = plan.get(s.name, fp32)
        total += weight_bytes(s, p)
        bits += BITS[p.weight] * s.n_out * s.k_in
        weights += s.n_out * s.k_in
        if prev is not None and p.act != prev:
            conv += s.act_elems * (ACT_BYTES[prev] + ACT_BYTES[p.act])
        prev = p.act
    return {"model_bytes": int(total), "conversion_bytes": int(conv), "avg_weight_bits": bits / max(weights, 1)}
