"""What the cost model knows about one (SoC, backend): sourced peaks, DRAM bandwidth, and the
stated constants that turn a loop nest's shape into time.

Two kinds of number live here and are never mixed up:

- **sourced** facts from the SoC registry (``targets/socs/*.toml``) or measured on the host
  (``host_soc()``): peak ops/s per precision, DRAM bandwidth, clocks, core counts;
- **stated constants** of this cost model (``CONSTANTS``), each with a nominal value, a low-high
  range used for the prediction bounds, and its basis. Where Qualcomm publishes no peak (Adreno,
  Hexagon) an **estimate range** is used, labelled as such, never presented as a fact.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from banana.targets.soc import Soc


@dataclass(frozen=True)
class Constant:
    """A cost-model constant: nominal value, bounds for the prediction range, and why."""

    value: float
    low: float
    high: float
    unit: str
    basis: str

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "unit": self.unit, "basis": self.basis}


# Constants of the CPU model for the code banana's LLVM backends emit today (dlight CPU rules:
# outer spatial loops parallel, reductions serial and scalar; no register or cache tiling).
CONSTANTS: dict[str, Constant] = {
    "cycles_per_scalar_mac": Constant(
        3.2, 2.0, 9.0, "cycles per reduction iteration per core, reduction column held by the L2",
        "a scalar reduction is a chain of dependent FP adds (FMA latency 4 cycles on Skylake-class x86 and on "
        "Cortex-X4/A720 per their optimisation guides, quoted from memory) plus a strided operand load from L2; "
        "nominal 3.2 = calibrated on this host (EPYC, one thread, thread CPU time) on a synthetic linear layer "
        "[1,256,128]x[128,256]+b (compiler/report/calibrate.py), not on any model; phone value assumed equal"),
    "cycles_per_scalar_mac_per_miss_doubling": Constant(
        3.1, 1.5, 6.0, "extra cycles per reduction iteration per doubling of K beyond the L2's set-limited capacity",
        "when the K lines of a reduction column exceed what the L2 holds for that stride (set aliasing included, "
        "roofline.column_capacity_lines) the next output re-fetches them from L3/DRAM: nominal 3.1 = calibrated "
        "on this host on a synthetic linear layer [1,32,1024]x[1024,1024]+b (K = 8x the capacity for its 4 KB "
        "stride; calibrate.py); phone value assumed equal (unverified)"),
    "cycles_per_scalar_op": Constant(
        1.0, 0.5, 2.0, "cycles per element-wise scalar op per core",
        "independent scalar ops issue about 1-2 per cycle on these out-of-order cores; LLVM's loop vectoriser "
        "lowers plain element-wise loops further (low bound)"),
    "cycles_per_element_moved": Constant(
        5.7, 2.0, 8.0, "cycles per store instruction of a zero-op (copy/transpose/padding) loop, one core",
        "copies and transposes are emitted as element loops, a strided read costing an L1 miss every few "
        "elements; a vectorised loop (the conv schedules' padding) moves a SIMD register per store "
        "(roofline._cpu_compute_s divides by the lanes); nominal 5.7 = calibrated on this host on a synthetic "
        "transpose [512,512] (calibrate.py, one thread, thread CPU time), not on any model"),
    "cycles_per_element_moved_in_l2": Constant(
        2.6, 1.0, 6.0, "cycles per element of a scalar copy loop whose operands the L2 holds, one core",
        "the strided reads of a transpose hit the L2 instead of missing it when the kernel's operands fit in half "
        "the L2 (roofline._cpu_compute_s); nominal 2.6 = calibrated on this host (2.5-3.2 over three runs, thread "
        "CPU time) on a synthetic transpose [128,128] (calibrate.py), not on any model; phone value assumed equal "
        "(unverified)"),
    "cycles_per_vector_move": Constant(
        1.0, 0.5, 6.0, "cycles per vector store of a copy from contiguous loads, one core",
        "a contiguous vector load + store pair issues in about a cycle from L1 on these cores (one 256/128-bit "
        "store port); stated, not calibrated: no synthetic workload isolates it from the call overhead; high "
        "end = the strided-copy cost per element (cycles_per_element_moved)"),
    "vector_efficiency": Constant(
        0.6, 0.2, 1.0, "fraction of SIMD peak",
        "loops the compiler vectorises (banana's default element-wise schedule, dlight's reductions): operands "
        "are loaded per op, no register tiling; nominal 0.6 = calibrated on this host (0.57-0.68, one thread, "
        "thread CPU time) on a synthetic fused element-wise kernel (calibrate.py), not on any model; phone value "
        "assumed equal (unverified)"),
    "simd_efficiency": Constant(
        0.75, 0.4, 1.1, "fraction of SIMD peak",
        "hand-written register-tiled kernels that issue explicit vector intrinsics (banana.kernels' fp32/fp16/int "
        "GEMMs; work.py counts their executed ops from the TIR: an FMA is 2 ops per lane): accumulators stay in "
        "registers, what is lost to peak is operand loads, packing and loop overhead. Calibrated on this host at "
        "0.96-1.10 (one thread, thread CPU time) on a synthetic linear layer [1,96,256]x[256,320]+b built with the "
        "GEMM kernels (calibrate.py), not on any model; that is against a peak derived at the nominal 2.45 GHz "
        "while the core boosts (EPYC: up to ~3.5 GHz, quoted from memory, unverified), i.e. about 0.7-0.77 of the "
        "boosted peak: nominal 0.75 for phones, whose peaks are stated at their maximum clock (unverified)"),
    "parallel_launch_us": Constant(
        8.0, 2.0, 20.0, "microseconds per parallel kernel call",
        "TVM thread-pool fork/join per parallel loop plus the VM call: calibrated on a near-empty parallel "
        "linear layer (calibrate.py): about 11 us with the pool's 2 threads on this shared host under load, "
        "2-3.5 us with one thread (no fork); nominal 8 for a multi-core phone pool (unverified)"),
    "serial_call_us": Constant(
        0.6, 0.3, 4.0, "microseconds per serial kernel call",
        "VM call instruction + packed-function dispatch inside a model's main: calibrated at 0.5-0.6 us per call "
        "on 16 chained near-empty linear layers on this host (calibrate.py, one thread, thread CPU time); a "
        "one-kernel module costs 1.9 us per call, most of it entering main once; phone value assumed equal "
        "(unverified)"),
    "dram_efficiency": Constant(
        0.8, 0.6, 0.9, "fraction of DRAM bandwidth",
        "streaming kernels reach 60-90 % of the theoretical DRAM bandwidth on phones and PCs (STREAM-style); the "
        "host's figure is itself a measured copy bandwidth"),
    "tuned_compute_efficiency": Constant(
        0.5, 0.3, 0.7, "fraction of peak compute",
        "assumption for tuned GEMM/attention kernels (MetaSchedule / banana kernels); not yet validated here: "
        "used only for the by-shape projections of large models"),
}

# Estimate ranges where the registry has no sourced peak (Qualcomm publishes none). op/s.
PEAK_ESTIMATES: dict[tuple[str, str], tuple[float, float, str]] = {
    ("adreno", "fp32"): (1.5e12, 4.5e12, "estimate, unverified: third-party tables put Adreno 740-830 at roughly "
                                         "2-4 TFLOPS fp32; not in the registry"),
    ("adreno", "fp16"): (3.0e12, 9.0e12, "estimate, unverified: 2x the fp32 range (packed half ALUs)"),
    ("adreno", "int8"): (3.0e12, 9.0e12, "estimate, unverified: no int8 dot product gain assumed over fp16"),
    ("hexagon", "int8"): (0.5e12, 2.0e12, "estimate, unverified: HVX (not HMX) 4 contexts x 128-byte vrmpy "
                                          "(~128 MAC/cycle each) at ~1-2 GHz; TVM emits HVX, not the tensor unit"),
    ("hexagon", "fp16"): (0.25e12, 1.0e12, "estimate, unverified: half the HVX int8 range (qfloat)"),
    ("hexagon", "fp32"): (0.12e12, 0.5e12, "estimate, unverified: a quarter of the HVX int8 range (qfloat)"),
}


PHONE_L2_BYTES = 512 * 1024
"""Per-core L2 of Cortex-A720/A715 (the majority of big cores): 512 KB, Arm product pages quoted from memory
(unverified); the prime core's larger L2 is ignored because parallel loops wait for the slowest core."""


def host_cache_bytes(level: int, default: int = 0) -> int:
    """Size of this machine's cache at ``level`` (sysfs), or ``default`` when it is not listed."""
    from pathlib import Path

    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == str(level):
                size = (index / "size").read_text().strip()
                scale = {"K": 1024, "M": 1024**2}.get(size[-1], 1)
                return int(size.rstrip("KM")) * scale
        except (OSError, ValueError):
            continue
    return default


def _host_l2_bytes() -> int:
    return host_cache_bytes(2, 1024 * 1024)


@dataclass(frozen=True)
class Peak:
    """Peak ops/s: ``value`` when sourced, else ``low``..``high`` as a labelled estimate."""

    value: float | None
    low: float
    high: float
    source: str
    kind: str  # "sourced" | "derived" | "estimate" | "unknown"

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "source": self.source, "kind": self.kind}


@dataclass(frozen=True)
class Machine:
    """One SoC + backend as the cost model sees it."""

    soc_id: str
    soc_name: str
    backend: str
    kind: str  # "cpu" (structural model) | "accelerator" (roofline + launch only)
    threads: int
    parallel_ghz: float  # clock of the slowest core a statically partitioned loop waits for
    serial_ghz: float  # clock of the fastest core
    fp32_lanes: int
    l2_bytes: int
    peaks: dict[str, Peak]
    dram_bytes_per_s: float
    dram_source: str
    constants: dict[str, Constant] = field(default_factory=lambda: dict(CONSTANTS))
    #: cores the peaks cover (0: ``threads``); stays put when ``threads`` is narrowed for a run on fewer
    #: cores, so vector code is timed at that share of the peak
    peak_threads: int = 0
    #: last-level cache size and its measured copy bandwidth (0: unknown, every byte comes from DRAM)
    llc_bytes: int = 0
    llc_bytes_per_s: float = 0.0

    def for_footprint(self, nbytes: int) -> Machine:
        """This machine for a model touching ``nbytes`` per step: when they fit in half the last-level
        cache (known sizes and bandwidth only), the steps after the first find them there, so the
        memory term moves them at the cache's bandwidth instead of DRAM's."""
        if not (self.llc_bytes and self.llc_bytes_per_s) or nbytes > self.llc_bytes // 2:
            return self
        return replace(self, dram_bytes_per_s=self.llc_bytes_per_s,
                       dram_source=f"last-level cache ({self.llc_bytes >> 20} MiB holds the model's "
                                   f"{nbytes / 2**20:.1f} MiB): its measured copy bandwidth")

    def peak_share(self, parallel: bool) -> float:
        """Share of the peak a loop reaches: all its threads' cores if parallel, one core if serial."""
        cores = self.peak_threads or self.threads
        return min(1.0, (self.threads if parallel else 1) / max(1, cores))

    def peak(self, precision: str) -> Peak:
        key = "int8" if precision in ("int4", "int8") else precision
        return self.peaks.get(key) or Peak(None, 0.0, 0.0, f"unknown: no peak for {self.backend}/{key}", "unknown")

    def to_json(self) -> dict[str, Any]:
        return {
            "soc_id": self.soc_id, "soc_name": self.soc_name, "backend": self.backend, "kind": self.kind,
            "threads": self.threads, "peak_threads": self.peak_threads or self.threads,
            "parallel_ghz": self.parallel_ghz, "serial_ghz": self.serial_ghz,
            "fp32_lanes": self.fp32_lanes, "l2_bytes": self.l2_bytes,
            "peaks": {k: v.to_json() for k, v in self.peaks.items()},
            "dram_bytes_per_s": self.dram_bytes_per_s, "dram_source": self.dram_source,
            "constants": {k: v.to_json() for k, v in self.constants.items()},
        }


def _peak_from_fact(soc: Soc, backend_key: str, precision: str) -> Peak | None:
    fact = soc.peak.get((backend_key, precision))
    if fact is None:
        return None
    value = float(fact.value)  # type: ignore[arg-type]
    return Peak(value, value, value, fact.source, "sourced" if fact.verified else "derived")


def machine_for(soc: Soc, backend: str) -> Machine:
    """The cost-model view of ``soc`` for ``backend`` (host, cpu, adreno or hexagon)."""
    peaks: dict[str, Peak] = {}
    backend_key = "host" if soc.id == "host" else backend
    for precision in ("fp32", "fp16", "int8"):
        peak = _peak_from_fact(soc, backend_key, precision)
        if peak is None and (backend, precision) in PEAK_ESTIMATES:
            low, high, why = PEAK_ESTIMATES[(backend, precision)]
            peak = Peak(None, low, high, why, "estimate")
        if peak is not None:
            peaks[precision] = peak
    big = [c for c in soc.clusters if not c.efficiency] or list(soc.clusters)
    threads = sum(c.count for c in big)
    if soc.id == "host":
        features = set(soc.cpu_features)
        lanes = 16 if "avx512f" in features else 8 if {"avx", "avx2"} & features else 4
        l2 = _host_l2_bytes()
    else:
        lanes = 4  # 128-bit NEON
        l2 = PHONE_L2_BYTES
    return Machine(
        soc_id=soc.id,
        soc_name=soc.name,
        backend=backend,
        kind="cpu" if backend in ("host", "cpu") else "accelerator",
        threads=threads,
        peak_threads=threads,
        parallel_ghz=min(c.max_ghz for c in big),
        serial_ghz=max(c.max_ghz for c in big),
        fp32_lanes=lanes,
        l2_bytes=l2,
        peaks=peaks,
        dram_bytes_per_s=soc.dram_bandwidth_bytes_per_s,
        dram_source=str(soc.facts.get("memory.dram_bandwidth_bytes_per_s").source
                        if "memory.dram_bandwidth_bytes_per_s" in soc.facts else "registry"),
    )
