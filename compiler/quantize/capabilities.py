"""What each backend can execute, as (weight, activation) precision pairs the search may choose.

Data, not code paths: Hexagon's HVX/HMX run integer activations only; Adreno runs FP16
activations with INT4/INT8 (dequantized-in-register) or FP16 weights; the ARM CPU has INT8xINT8
dot products (``sdot``; INT4 weights are unpacked to INT8) and FP16 FMA; ``host``/``None`` is
the unconstrained simulation. (The Backend classes in ``banana.targets.backends`` should own
this table once they grow a ``quant_support`` field; until then the quantizer keeps it.)
"""

from __future__ import annotations

from banana.compiler.errors import BadConfigError

Pair = tuple[str, str]

_ALL: tuple[Pair, ...] = tuple((w, a) for w in ("int4", "int8", "fp16") for a in ("int8", "int16", "fp16"))

BACKEND_SUPPORT: dict[str, tuple[Pair, ...]] = {
    "hexagon": (("int4", "int8"), ("int8", "int8"), ("int4", "int16"), ("int8", "int16")),
    "adreno": (("int4", "fp16"), ("int8", "fp16"), ("fp16", "fp16")),
    "cpu": (("int4", "int8"), ("int8", "int8"), ("fp16", "fp16")),
    "host": _ALL,
}


def supported_pairs(backend: str | None) -> tuple[Pair, ...]:
    """The (weight, activation) pairs ``backend`` runs; every pair for ``None``."""
    if backend is None:
        return _ALL
    try:
        return BACKEND_SUPPORT[backend]
    except KeyError:
        raise BadConfigError(f"quantize backend {backend!r}; known: {', '.join(BACKEND_SUPPORT)}") from None
