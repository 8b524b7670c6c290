"""This machine as a ``Soc``: the measurement host that runs tests, tuning and ``banana verify``.

Cost models and reports treat the host like any phone SoC, so it gets the same typed view. Its
facts are read from the OS (``/proc/cpuinfo``, sysfs), derived from those with stated assumptions,
or measured here (DRAM bandwidth); nothing is looked up from a table, so every source string
says which of the three it is.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from banana.targets.soc import CpuCluster, Fact, Soc

logger = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
SYSFS_CPU0 = Path("/sys/devices/system/cpu/cpu0")

# Features worth reporting (x86 flag names as in /proc/cpuinfo; arm64 names mapped to the plain
# names the SoC data files use).
_X86_FEATURES = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
_ARM_FEATURES = {
    "asimd": "neon",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "asimdhp": "fp16",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "sme": "sme",
}


def _read_cpuinfo(path: Path = CPUINFO) -> list[dict[str, str]]:
    """One dict per processor block of /proc/cpuinfo (empty if the file does not exist)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    blocks: list[dict[str, str]] = []
    for chunk in text.split("\n\n"):
        entry = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                entry[key.strip()] = value.strip()
        if entry:
            blocks.append(entry)
    return blocks


def _physical_cores(blocks: list[dict[str, str]]) -> tuple[int, str]:
    pairs = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    if pairs:
        return len(pairs), "/proc/cpuinfo: distinct (physical id, core id) pairs"
    return os.cpu_count() or 1, "os.cpu_count() (no core ids in /proc/cpuinfo; SMT threads would count)"


def _clock_ghz(blocks: list[dict[str, str]]) -> tuple[float, str]:
    """Max clock from cpufreq when the kernel exposes it, else /proc/cpuinfo's current 'cpu MHz'."""
    max_freq = SYSFS_CPU0 / "cpufreq" / "cpuinfo_max_freq"
    try:
        return int(max_freq.read_text().strip()) / 1e6, f"{max_freq} (kHz)"
    except (OSError, ValueError):
        pass
    mhz = [float(b["cpu MHz"]) for b in blocks if "cpu MHz" in b]
    if mhz:
        return max(mhz) / 1e3, (
            "/proc/cpuinfo 'cpu MHz' (current clock, max over CPUs; no cpufreq in sysfs, e.g. under a "
            "hypervisor: nominal clock, turbo not visible)"
        )
    return math.nan, "unknown: neither cpufreq nor /proc/cpuinfo 'cpu MHz' available"


def _features(blocks: list[dict[str, str]]) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    first = blocks[0] if blocks else {}
    if "flags" in first:
        flags = set(first["flags"].split())
        present = tuple(f for f in _X86_FEATURES if f in flags)
        absent = tuple(f for f in _X86_FEATURES if f not in flags)
        return present, absent, "/proc/cpuinfo 'flags'"
    if "Features" in first:
        flags = set(first["Features"].split())
        present = tuple(name for hw, name in _ARM_FEATURES.items() if hw in flags)
        absent = tuple(name for hw, name in _ARM_FEATURES.items() if hw not in flags)
        return present, absent, "/proc/cpuinfo 'Features' (HWCAP names mapped to plain names)"
    return (), (), "unknown: no /proc/cpuinfo flags"


def _fp32_lanes(features: tuple[str, ...]) -> tuple[int, str]:
    if "avx512f" in features:
        return 16, "512-bit AVX-512 (avx512f)"
    if "avx" in features or "avx2" in features:
        return 8, "256-bit AVX (avx/avx2)"
    return 4, "128-bit SSE/NEON"


def _l3_bytes() -> int | None:
    for index in sorted((SYSFS_CPU0 / "cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "3":
                size = (index / "size").read_text().strip()
                units = {"K": 1024, "M": 1024**2, "G": 1024**3}
                return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except (OSError, ValueError):
            continue
    return None


@functools.cache
def measure_dram_bandwidth() -> Fact:
    """Copy bandwidth of this host in bytes/s (best of 5 numpy copies), measured once per process.

    Arrays are at least twice the L3 size so the copy streams from DRAM; read plus write traffic
    is counted (write-allocate traffic is not, so this slightly underestimates the bus).
    """
    l3 = _l3_bytes()
    nbytes = min(max(64 * 2**20, 2 * (l3 or 0)), 512 * 2**20)
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault in dst's pages before timing
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    bandwidth = 2 * nbytes / best
    logger.debug("host copy bandwidth %.2f GB/s (%d MiB arrays)", bandwidth / 1e9, nbytes >> 20)
    return Fact(
        value=bandwidth,
        unit="B/s",
        source=(
            f"measured on this host: numpy copyto of {nbytes >> 20} MiB float64 arrays "
            f"(L3 {'unknown' if l3 is None else f'{l3 >> 20} MiB'}), best of 5, "
            "2 x bytes (read + write) / time"
        ),
        verified=True,
    )


@functools.cache
def host_soc() -> Soc:
    """This machine as a ``Soc`` (id ``host``); peak is keyed ("host", "fp32")."""
    from tvm.target import codegen

    blocks = _read_cpuinfo()
    model = (blocks[0].get("model name") if blocks else None) or platform.processor() or "unknown CPU"
    cores, cores_source = _physical_cores(blocks)
    ghz, ghz_source = _clock_ghz(blocks)
    present, absent, features_source = _features(blocks)
    mcpu = codegen.llvm_get_system_cpu()
    facts: dict[str, Fact] = {
        "cpu.model": Fact(model, "", "/proc/cpuinfo 'model name'", True),
        "cpu.llvm_mcpu": Fact(mcpu, "", "tvm.target.codegen.llvm_get_system_cpu()", True),
        "cpu.cores": Fact(cores, "cores", cores_source, True),
        "cpu.max_ghz": Fact(ghz, "GHz", ghz_source, not math.isnan(ghz)),
        "cpu.features": Fact(present, "", features_source, True),
        "cpu.features_absent": Fact(absent, "", features_source, True),
        "memory.dram_bandwidth_bytes_per_s": measure_dram_bandwidth(),
    }
    peak: dict[tuple[str, str], Fact] = {}
    if not math.isnan(ghz):
        lanes, lanes_why = _fp32_lanes(present)
        fma_units = 2
        ops = 2 * fma_units if "fma" in present or platform.machine() in ("aarch64", "arm64") else 2
        value = cores * ghz * 1e9 * lanes * ops
        peak[("host", "fp32")] = Fact(
            value=value,
            unit="op/s",
            source=(
                f"derived: {cores} cores x {ghz:.3f} GHz x {lanes} fp32 lanes ({lanes_why}) x {ops} op/cycle "
                f"per lane (assumption: {fma_units} FMA pipes per core, FMA = 2 op; not probed) = "
                f"{value / 1e9:.1f} G"
            ),
            verified=False,
        )
        facts["peak.host.fp32"] = peak[("host", "fp32")]
    return Soc(
        id="host",
        name=model,
        aliases=("host",),
        cpu_arch=platform.machine(),
        clusters=(CpuCluster(core=model, count=cores, max_ghz=ghz, efficiency=False),),
        cpu_llvm_mcpu=mcpu,
        cpu_features=present,
        cpu_features_absent=absent,
        cpu_mattr=(),
        gpu=None,
        hexagon=None,
        dram_bandwidth_bytes_per_s=float(facts["memory.dram_bandwidth_bytes_per_s"].value),
        peak=MappingProxyType(peak),
        thermal=MappingProxyType({}),
        facts=MappingProxyType(facts),
    )


def host_target() -> dict[str, Any]:
    """TVM target dict for this machine; ``mcpu`` is resolved here because TVM ignores "native"."""
    from tvm.target import codegen

    return {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": host_cores()}


def host_cores(cpus: set[int] | None = None, sysfs: Path = SYSFS_CPU0.parent) -> int:
    """Physical cores this process may run on: its CPU affinity set, SMT siblings counted once.

    Why not ``os.cpu_count()``: a container or ``taskset`` may allow fewer CPUs, and two hyper-threads
    of one core share its FMA ports (a second thread per core buys a GEMM nothing). Where sysfs has no
    topology every allowed CPU counts as a core."""
    allowed = cpus if cpus is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity")
                                              else set(range(os.cpu_count() or 1)))
    cores: set[tuple[str, str] | int] = set()
    for cpu in allowed:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(cpu)
    return max(1, len(cores))


#: TVM's runtime reads this once, when its thread pool starts (the first parallel kernel).
THREADS_ENV = "TVM_NUM_THREADS"


def configure_host_threads() -> int:
    """Size TVM's CPU thread pool to :func:`host_cores` unless the user chose (``TVM_NUM_THREADS``).

    Why: without the variable TVM starts ``logical CPUs / 2`` workers on every x86 machine (it assumes
    two hyper-threads per core). On a VM or CI runner whose vCPUs are whole cores (this 2-vCPU host:
    one thread per core) every parallel kernel then ran on one thread and still paid the fork/join:
    small DiT 99 ms instead of 56 ms, the 256x384x384 GEMM 0.90 vs 0.48 ms. The pool is sized once,
    at its first use, so this must run before a compiled model first runs in the process (and before
    a tuning runner's worker processes start: they inherit the environment). Returns the thread count
    the pool will use."""
    chosen = os.environ.get(THREADS_ENV)
    if chosen and chosen.strip().isdigit() and int(chosen) > 0:
        return int(chosen)
    threads = host_cores()
    os.environ[THREADS_ENV] = str(threads)
    logger.debug("TVM thread pool: %d threads (%s unset)", threads, THREADS_ENV)
    return threads


def host_vm(executable: Any) -> Any:
    """A Relax VM on this machine's CPU, its thread pool sized first (:func:`configure_host_threads`).

    Every in-process run, measurement and benchmark builds its VM here, so none can start TVM's pool
    at half the cores. A caller's own ``TVM_NUM_THREADS`` (e.g. 1 for a thread-CPU clock) is kept."""
    import tvm
    from tvm import relax

    configure_host_threads()
    return relax.VirtualMachine(executable, tvm.cpu())
