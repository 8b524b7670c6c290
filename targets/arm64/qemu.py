"""Which qemu-aarch64 CPU model emulates a SoC's ISA features.

qemu traps (SIGILL) on instructions its CPU model lacks, e.g. ``smmla`` under ``cortex-a76``, so
verification must run on a model that has every feature the code was compiled for, while still
lacking the ones the phone lacks (SVE/SME on Snapdragons) so that such code fails here too.

Measured with Debian's qemu-aarch64 7.2 (HWCAPs seen by a probe program, smmla executed):
``cortex-a72`` has plain NEON; ``neoverse-n1`` adds dotprod and fp16; ``max,sve=off,sme=off`` adds
i8mm and bf16 but no SVE/SME; ``max`` has everything. This qemu has no neoverse-n2 and cannot
toggle i8mm/bf16 individually, so code needing only dotprod is not stopped from using i8mm when
the feature list asks for i8mm or bf16.
"""

from __future__ import annotations

from collections.abc import Iterable

from banana.compiler.errors import BadConfigError

# Aliases so LLVM ``mattr`` spellings ("+fullfp16") and /proc/cpuinfo spellings map to one name.
_ALIASES = {
    "asimd": "neon",
    "fullfp16": "fp16",
    "fphp": "fp16",
    "asimdhp": "fp16",
    "asimddp": "dotprod",
    "fp-armv8": "fp",
}

_BASE = frozenset({"neon", "fp", "crc", "v8a"})
_N1 = _BASE | {"lse", "rdm", "rcpc", "fp16", "dotprod", "v8.2a"}
_MAX_NO_SVE = _N1 | {"i8mm", "bf16", "v8.6a", "v9a"}
_MAX = _MAX_NO_SVE | {"sve", "sve2", "sme"}

#: Least capable first: the first model covering all requested features wins.
CPU_MODELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("cortex-a72", _BASE),
    ("neoverse-n1", _N1),
    ("max,sve=off,sme=off", _MAX_NO_SVE),
    ("max", _MAX),
)
KNOWN_FEATURES = frozenset(_MAX)


def normalize_feature(name: str) -> str:
    """Canonical feature name: lower case, no leading '+', aliases resolved."""
    key = name.strip().lower().lstrip("+")
    return _ALIASES.get(key, key)


def qemu_cpu_for_features(features: Iterable[str]) -> str:
    """The ``qemu-aarch64 -cpu`` value (model plus property toggles) covering ``features``."""
    wanted = set()
    for f in features:
        if f.strip().startswith("-"):
            continue  # a disabled feature never requires a more capable model
        norm = normalize_feature(f)
        if norm not in KNOWN_FEATURES:
            raise BadConfigError(
                f"unknown arm64 ISA feature {f!r}: known are {', '.join(sorted(KNOWN_FEATURES))}"
            )
        wanted.add(norm)
    for model, have in CPU_MODELS:
        if wanted <= have:
            return model
    raise AssertionError("unreachable: the last model covers KNOWN_FEATURES")  # pragma: no cover
