"""Which ONNX nodes banana can compile, decided for the whole graph before anything is built.

TVM's importer stops at the first operator it cannot convert and ignores operator domains;
users need every problem at once, with node names, so they can fix their export in one go.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx
from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

from banana.compiler.errors import UnsupportedOpError

# onnxruntime contrib operators that TVM's importer converts (it reads them by op type only).
_MICROSOFT_OPS = frozenset(
    {"Attention", "BiasGelu", "EmbedLayerNormalization", "FastGelu", "Gelu", "SkipLayerNormalization"}
)
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})

# Ops TVM converts but gets wrong: reason shown to the user.
_KNOWN_BROKEN = {
    # TVM 0.27 reads the standard opset-23 Attention as Microsoft's (KeyError: 'num_heads').
    ("", "Attention"): "ONNX Attention with features banana cannot rewrite (KV cache, softcap); TVM 0.27 misreads it",
}


@dataclass(frozen=True)
class UnsupportedNode:
    name: str
    op_type: str
    domain: str
    opset: int
    reason: str

    def describe(self) -> str:
        domain = self.domain or "ai.onnx"
        return f"'{self.name}' ({self.op_type}, domain {domain}, opset {self.opset}: {self.reason})"


def _walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _walk(sub)


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if e.domain == "ai.onnx" else e.domain): int(e.version) for e in model.opset_import}


def find_unsupported_nodes(model: onnx.ModelProto) -> list[UnsupportedNode]:
    convert_map = _get_convert_map()
    opsets = _opsets(model)
    found: list[UnsupportedNode] = []
    for index, node in enumerate(_walk(model.graph)):
        domain = "" if node.domain == "ai.onnx" else node.domain
        name = node.name or f"#{index}:{node.op_type}"
        opset = opsets.get(domain, 0)
        reason = None
        if domain in _DEFAULT_DOMAINS:
            if node.op_type not in convert_map and node.op_type not in ("Constant", "If"):
                reason = "no converter"
            elif (domain, node.op_type) in _KNOWN_BROKEN:
                reason = _KNOWN_BROKEN[(domain, node.op_type)]
        elif domain == "com.microsoft":
            if node.op_type not in _MICROSOFT_OPS:
                reason = "no converter for this onnxruntime contrib op"
        else:
            reason = "unknown operator domain"
        if reason:
            found.append(UnsupportedNode(name, node.op_type, domain, opset, reason))
    return found


def check_supported(model: onnx.ModelProto, source: str) -> None:
    unsupported = find_unsupported_nodes(model)
    if unsupported:
        listed = "; ".join(node.describe() for node in unsupported)
        raise UnsupportedOpError(f"{source}: {len(unsupported)} unsupported node(s): {listed}")
