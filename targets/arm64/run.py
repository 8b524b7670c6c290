"""Executing an arm64 artifact under qemu-aarch64 and reading its outputs back.

Inputs and outputs cross the qemu boundary as files in TVM's param-dict format (inputs
``i0..``, outputs ``o0..``), the same format as the weights, so the runner needs no other parser.
Times reported here are emulated: they rank nothing and predict no phone latency.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from banana.compiler.errors import ArtifactError, BadConfigError, ToolchainError, VerificationError

from .runtime import Arm64Runtime, ensure_runtime
from .toolchain import is_aarch64_elf

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm64RunResult:
    """Outputs of one ``main`` call under qemu, plus emulated timings (not phone latency)."""

    outputs: list[np.ndarray]
    #: loading the library and creating the VM, milliseconds under emulation
    emulated_load_ms: float
    #: the first call of main (includes the pooled allocator's first allocations)
    emulated_first_run_ms: float
    #: one entry per ``repeat`` call after the first; empty when repeat == 0
    emulated_run_ms: list[float] = field(default_factory=list)
    #: host wall-clock seconds of the whole qemu process
    wall_s: float = 0.0
    qemu_cpu: str = ""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _save_dict(arrays: dict[str, np.ndarray], path: Path) -> None:
    import tvm

    # np.require keeps 0-d inputs 0-d (np.ascontiguousarray would make them 1-d).
    tvm.runtime.save_param_dict_to_file(
        {k: tvm.runtime.tensor(np.require(v, requirements="C")) for k, v in arrays.items()}, str(path)
    )


def _load_outputs(path: Path) -> list[np.ndarray]:
    import tvm

    loaded = tvm.runtime.load_param_dict_from_file(str(path))
    keys = [f"o{i}" for i in range(len(loaded))]
    if sorted(loaded.keys()) != sorted(keys):
        raise ArtifactError(f"{path}: output keys {sorted(loaded.keys())} are not o0..o{len(loaded) - 1}")
    return [loaded[k].numpy() for k in keys]


def run_arm64(
    lib_path: Path,
    params_path: Path,
    inputs: Sequence[np.ndarray],
    *,
    qemu_cpu: str,
    repeat: int = 0,
    timeout_s: float = 600,
    runtime: Arm64Runtime | None = None,
) -> Arm64RunResult:
    """Run ``main(inputs..., params...)`` of an arm64 library under qemu-aarch64.

    A crash or error of the artifact (illegal instruction, wrong arity, missing function) is a
    VerificationError; a missing tool, bad usage or a timeout is a ToolchainError. Both carry the
    last line of the runner's stderr.
    """
    lib_path, params_path = Path(lib_path), Path(params_path)
    for what, p in (("library", lib_path), ("params", params_path)):
        if not p.is_file():
            raise ArtifactError(f"{what} file not found: {p}")
    if not is_aarch64_elf(lib_path):
        raise ArtifactError(f"{lib_path} is not an AArch64 ELF library (exported with the host compiler?)")
    if repeat < 0:
        raise ValueError(f"repeat must be >= 0, got {repeat}")
    rt = runtime or ensure_runtime()
    with tempfile.TemporaryDirectory(prefix="banana-arm64-run-") as tmp:
        in_path, out_path = Path(tmp) / "inputs.params", Path(tmp) / "outputs.params"
        _save_dict({f"i{i}": np.asarray(x) for i, x in enumerate(inputs)}, in_path)
        cmd = rt.runner_command(
            qemu_cpu, lib_path.resolve(), params_path.resolve(), in_path, out_path, repeat
        )
        logger.debug("running %s", " ".join(cmd))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise ToolchainError(
                f"{lib_path}: qemu-aarch64 run exceeded {timeout_s:g} s (-cpu {qemu_cpu})"
            ) from e
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            reason = _last_line(proc.stderr)
            if proc.returncode == 2 and reason.startswith("banana-run: error: usage"):
                raise ToolchainError(f"banana-run rejected its arguments: {reason}")
            if "unable to find CPU model" in reason or "can't apply global" in reason:
                raise BadConfigError(f"qemu-aarch64 rejected -cpu {qemu_cpu}: {reason}")
            if reason.startswith("qemu-aarch64:"):
                raise ToolchainError(f"qemu-aarch64 cannot start {rt.runner}: {reason}")
            raise VerificationError(
                f"{lib_path}: run under qemu-aarch64 -cpu {qemu_cpu} failed ({proc.returncode}): {reason}"
            )
        try:
            stats = json.loads(_last_line(proc.stdout))
        except json.JSONDecodeError as e:
            raise ToolchainError(f"banana-run printed no timing line: {_last_line(proc.stdout)}") from e
        outputs = _load_outputs(out_path)
    return Arm64RunResult(
        outputs=outputs,
        emulated_load_ms=float(stats["load_ms"]),
        emulated_first_run_ms=float(stats["first_run_ms"]),
        emulated_run_ms=[float(x) for x in stats["run_ms"]],
        wall_s=wall,
        qemu_cpu=qemu_cpu,
    )
