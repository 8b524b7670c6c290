"""SoC registry: phone SoC facts loaded from data files, and the arm64 CPU target they imply.

Facts live in ``targets/socs/<ID>.toml`` (one file per SoC, every number with its ``source``), so
adding a SoC means adding a file, and a reviewer can audit each number where it is written. This
module only validates, indexes and exposes them; backends (cpu / adreno / hexagon) read the typed
view below instead of hard-coding chip knowledge. Adreno and Hexagon target dicts are built by
their own backends (``targets/opencl``, ``targets/hexagon``) from ``Soc.gpu`` and ``Soc.hexagon``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema

from banana.compiler.errors import BadConfigError

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "socs"
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "soc.schema.json"

BACKENDS: tuple[str, ...] = ("cpu", "adreno", "hexagon")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
ARM64_TRIPLE = "aarch64-linux-gnu"

FactValue = float | int | str | tuple[str, ...]


@dataclass(frozen=True)
class Fact:
    """One sourced fact; ``verified`` is False for derived, assumed or secondary-source values."""

    value: FactValue
    unit: str
    source: str
    verified: bool


@dataclass(frozen=True)
class CpuCluster:
    """A group of identical cores at one clock; ``efficiency`` cores are left out of default targets."""

    core: str
    count: int
    max_ghz: float
    efficiency: bool
    simd_pipes_128b: int | None = None


@dataclass(frozen=True)
class Gpu:
    """What the Adreno backend needs to know; fields Qualcomm does not publish stay None."""

    name: str
    max_ghz: float | None = None
    slices: int | None = None
    local_memory_bytes: int | None = None


@dataclass(frozen=True)
class Hexagon:
    """Hexagon DSP facts the HVX backend turns into a target (``mcpu``, ``vtcm-capacity``, ...)."""

    arch: str
    vtcm_bytes: int
    hvx_contexts: int
    hvx_vector_bytes: int = 128

    @property
    def version(self) -> int:
        """Numeric architecture version, e.g. 73 for ``v73`` (for feature comparisons)."""
        return int(self.arch[1:])

    @property
    def llvm_mcpu(self) -> str:
        """LLVM's processor name, e.g. ``hexagonv73``."""
        return f"hexagon{self.arch}"


@dataclass(frozen=True)
class SustainedFigure:
    """A published sustained-performance result; ``bound`` says if the fraction is a limit only."""

    backend: str
    test: str
    device: str
    bound: str
    retained_fraction: float


@dataclass(frozen=True)
class ReferenceLatency:
    """Latency the closed vendor stack reaches on this SoC: context for our numbers, not a target."""

    model: str
    device: str
    stack: str
    latency_ms: float


@dataclass(frozen=True)
class Soc:
    """Typed view of one SoC data file (or of the host, see ``banana.targets.host``).

    ``peak`` maps (backend, precision) to ops/s facts; a missing key means unknown, never zero.
    ``facts`` holds every fact of the file by dotted path (``cpu.clusters[0].max_ghz``) so a
    report can print each number with its source.
    """

    id: str
    name: str
    aliases: tuple[str, ...]
    cpu_arch: str
    clusters: tuple[CpuCluster, ...]
    cpu_llvm_mcpu: str
    cpu_features: tuple[str, ...]
    cpu_features_absent: tuple[str, ...]
    cpu_mattr: tuple[str, ...]
    gpu: Gpu | None
    hexagon: Hexagon | None
    dram_bandwidth_bytes_per_s: float
    peak: Mapping[tuple[str, str], Fact] = field(hash=False)
    thermal: Mapping[str, Fact] = field(hash=False)
    sustained: tuple[SustainedFigure, ...] = ()
    reference_latencies: tuple[ReferenceLatency, ...] = ()
    facts: Mapping[str, Fact] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    source_file: Path | None = None

    @property
    def total_cores(self) -> int:
        return sum(c.count for c in self.clusters)

    @property
    def big_cores(self) -> int:
        """Cores outside efficiency clusters: the default thread count, since mixing in little
        cores makes a statically partitioned parallel loop wait for its slowest thread."""
        return sum(c.count for c in self.clusters if not c.efficiency)

    def peak_ops_per_s(self, backend: str, precision: str) -> float | None:
        """Peak ops/s for a backend and precision, or None when unknown."""
        fact = self.peak.get((backend, precision))
        return None if fact is None else float(fact.value)  # type: ignore[arg-type]

    def has_cpu_feature(self, name: str) -> bool:
        """Plain feature name as qemu/HWCAP use it (``dotprod``, ``i8mm``, ``fp16``, ``bf16``, ``sve``)."""
        return name in self.cpu_features


def normalize_name(name: str) -> str:
    """Canonical lookup key: case-insensitive, spaces and underscores read as dashes."""
    return re.sub(r"[\s_]+", "-", name.strip().casefold())


@functools.cache
def _schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _field_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _validate(raw: dict[str, Any], path: Path) -> None:
    error = jsonschema.exceptions.best_match(_schema_validator().iter_errors(raw))
    if error is None:
        return
    message = " ".join(error.message.split())
    if len(message) > 160:
        message = message[:157] + "..."
    raise BadConfigError(f"{path}: field '{_field_path(error.absolute_path)}': {message}")


def _is_fact(node: Any) -> bool:
    return isinstance(node, dict) and "value" in node and "source" in node


def _fact(node: dict[str, Any]) -> Fact:
    value = node["value"]
    if isinstance(value, list):
        value = tuple(value)
    return Fact(value=value, unit=node.get("unit", ""), source=node["source"], verified=node["verified"])


def _collect_facts(node: Any, prefix: str, out: dict[str, Fact]) -> None:
    if _is_fact(node):
        out[prefix] = _fact(node)
    elif isinstance(node, dict):
        for key, child in node.items():
            _collect_facts(child, f"{prefix}.{key}" if prefix else key, out)
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _collect_facts(child, f"{prefix}[{i}]", out)


def _opt(table: Mapping[str, Any], key: str) -> Any:
    return table[key]["value"] if key in table else None


def _soc_from_raw(raw: dict[str, Any], path: Path) -> Soc:
    cpu, gpu, hexagon = raw["cpu"], raw["gpu"], raw["hexagon"]
    facts: dict[str, Fact] = {}
    _collect_facts(raw, "", facts)
    peak = {
        (backend, precision): _fact(node) for backend, table in raw["peak"].items() for precision, node in table.items()
    }
    return Soc(
        id=raw["id"],
        name=raw["name"],
        aliases=tuple(raw["aliases"]),
        cpu_arch="aarch64",
        clusters=tuple(
            CpuCluster(
                core=c["core"],
                count=c["count"]["value"],
                max_ghz=float(c["max_ghz"]["value"]),
                efficiency=c["efficiency"],
                simd_pipes_128b=c["simd_pipes_128b"]["value"],
            )
            for c in cpu["clusters"]
        ),
        cpu_llvm_mcpu=cpu["llvm_mcpu"],
        cpu_features=tuple(cpu["features"]["value"]),
        cpu_features_absent=tuple(cpu["features_absent"]["value"]),
        cpu_mattr=tuple(cpu["mattr"]),
        gpu=Gpu(
            name=gpu["name"]["value"],
            max_ghz=_opt(gpu, "max_ghz"),
            slices=_opt(gpu, "slices"),
            local_memory_bytes=_opt(gpu, "local_memory_bytes"),
        ),
        hexagon=Hexagon(
            arch=hexagon["arch"]["value"],
            vtcm_bytes=hexagon["vtcm_bytes"]["value"],
            hvx_contexts=hexagon["hvx_contexts"]["value"],
            hvx_vector_bytes=hexagon["hvx_vector_bytes"]["value"],
        ),
        dram_bandwidth_bytes_per_s=float(raw["memory"]["dram_bandwidth_bytes_per_s"]["value"]),
        peak=MappingProxyType(peak),
        thermal=MappingProxyType({k: _fact(v) for k, v in raw["thermal"].items()}),
        sustained=tuple(
            SustainedFigure(
                backend=s["backend"],
                test=s["test"],
                device=s["device"],
                bound=s.get("bound", "exact"),
                retained_fraction=float(s["retained_fraction"]["value"]),
            )
            for s in raw.get("sustained", [])
        ),
        reference_latencies=tuple(
            ReferenceLatency(
                model=r["model"],
                device=r["device"],
                stack=r["stack"],
                latency_ms=float(r["latency_ms"]["value"]),
            )
            for r in raw.get("reference_latency", [])
        ),
        facts=MappingProxyType(facts),
        source_file=path,
    )


def _load_file(path: Path) -> Soc:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadConfigError(f"{path}: cannot read SoC data file: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BadConfigError(f"{path}: invalid TOML: {exc}") from exc
    _validate(raw, path)
    return _soc_from_raw(raw, path)


@functools.cache
def _registry(data_dir: Path) -> tuple[dict[str, Soc], dict[str, str]]:
    """All SoCs of one data dir by id, plus the lookup index (normalized id/alias -> id)."""
    files = sorted(data_dir.glob("*.toml"))
    if not files:
        raise BadConfigError(f"{data_dir}: no SoC data files (*.toml)")
    socs: dict[str, Soc] = {}
    index: dict[str, str] = {}
    for path in files:
        soc = _load_file(path)
        if soc.id in socs:
            raise BadConfigError(f"{path}: field 'id': '{soc.id}' already defined in {socs[soc.id].source_file}")
        socs[soc.id] = soc
        for key in {normalize_name(soc.id), *(normalize_name(a) for a in soc.aliases)}:
            if key in index and index[key] != soc.id:
                raise BadConfigError(f"{path}: field 'aliases': '{key}' already names {index[key]}")
            index[key] = soc.id
    logger.debug("loaded %d SoC data files from %s", len(socs), data_dir)
    return socs, index


def _resolve_dir(data_dir: Path | None) -> Path:
    return DATA_DIR if data_dir is None else Path(data_dir).resolve()


def clear_cache() -> None:
    """Forget loaded data files (for tools that edit them while running)."""
    _registry.cache_clear()


def list_socs(data_dir: Path | None = None) -> list[str]:
    """Ids of all SoCs in the data dir (default: the packaged ``targets/socs``), sorted."""
    socs, _ = _registry(_resolve_dir(data_dir))
    return sorted(socs)


def load_soc(name_or_alias: str, data_dir: Path | None = None) -> Soc:
    """The SoC named by id or alias (case-insensitive); every data file is schema-checked once."""
    socs, index = _registry(_resolve_dir(data_dir))
    soc_id = index.get(normalize_name(name_or_alias))
    if soc_id is None:
        raise BadConfigError(f"unknown SoC '{name_or_alias}'; known: {', '.join(sorted(socs))}")
    return socs[soc_id]


def cpu_target(soc: Soc, num_cores: int | None = None) -> dict[str, Any]:
    """TVM target dict for the SoC's arm64 CPU cores.

    ``mcpu`` is the prime core (scheduling model) and ``mattr`` lists the features the SoC really
    exposes; LLVM's CPU tables are not trusted for features (cortex-x3/x4 imply SVE, which these
    parts do not expose; hence the explicit ``-sve`` entries in the data). ``num-cores`` defaults to
    the big (non-efficiency) cores: MetaSchedule and the runtime thread pool use it as the thread
    count, and little cores would stall statically partitioned loops.
    """
    if soc.cpu_arch != "aarch64":
        raise BadConfigError(
            f"SoC '{soc.id}' is not an arm64 SoC; use banana.targets.host.host_target() for this machine"
        )
    cores = soc.big_cores if num_cores is None else num_cores
    if not 1 <= cores <= soc.total_cores:
        raise BadConfigError(f"num_cores {cores} is outside 1..{soc.total_cores} for SoC '{soc.id}'")
    return {
        "kind": "llvm",
        "mtriple": ARM64_TRIPLE,
        "mcpu": soc.cpu_llvm_mcpu,
        "mattr": list(soc.cpu_mattr),
        "num-cores": cores,
    }
