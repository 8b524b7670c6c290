"""The arm64 TVM runtime (from PyPI's aarch64 wheels) and the ``banana-run`` runner built on it.

Artifacts are verified by executing them under qemu-aarch64 with the very runtime library a
Linux arm64 device would load, so the host needs that library for arm64: it is taken from the
aarch64 wheels of the same apache-tvm / apache-tvm-ffi versions the host compiles with (a
mismatch would change the executable format under our feet).

Everything lands in a temp dir first and is renamed into place, and a finished runtime is
recognised only by its stamp file written last: a killed download or build is never reused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from banana.compiler.errors import BadConfigError, ToolchainError

from .toolchain import SYSROOT, cross_compile, require_sysroot, require_tool

logger = logging.getLogger(__name__)

RUNNER_SOURCE = Path(__file__).with_name("runner.cc")
RUNNER_NAME = "banana-run"
STAMP = "READY.json"
_TVM_DIST, _FFI_DIST = "apache-tvm", "apache-tvm-ffi"
_FALLBACK_VERSIONS = {_TVM_DIST: "0.27.0.post1", _FFI_DIST: "0.1.14.post1"}
_WHEEL_PREFIX = {_TVM_DIST: "apache_tvm-", _FFI_DIST: "apache_tvm_ffi-"}
# Members of each wheel that the runtime dir needs: (wheel, member prefix, destination in root).
_LIBS = ((_TVM_DIST, "tvm/lib/libtvm_runtime.so"), (_FFI_DIST, "tvm_ffi/lib/libtvm_ffi.so"))
_INCLUDE_PREFIX = "tvm_ffi/include/"  # tvm-ffi headers incl. dlpack.h: all the runner needs


@dataclass(frozen=True)
class Arm64Runtime:
    """A finished arm64 runtime directory: ``lib/`` (TVM runtime), ``include/``, the runner."""

    root: Path
    lib_dir: Path
    include_dir: Path
    runner: Path
    tvm_version: str
    ffi_version: str

    def qemu_command(self, qemu_cpu: str) -> list[str]:
        """``qemu-aarch64`` prefix that runs an arm64 Linux program with Debian's cross glibc."""
        if not qemu_cpu or any(c.isspace() for c in qemu_cpu):
            raise BadConfigError(f"bad qemu-aarch64 cpu {qemu_cpu!r}: expected e.g. 'max,sve=off,sme=off'")
        return [require_tool("qemu-aarch64"), "-L", str(require_sysroot()), "-cpu", qemu_cpu]

    def runner_command(
        self, qemu_cpu: str, lib: Path, params: Path, inputs: Path, outputs: Path, repeat: int = 0
    ) -> list[str]:
        """Full command line running ``banana-run`` on an artifact under qemu."""
        cmd = [
            *self.qemu_command(qemu_cpu),
            str(self.runner),
            str(lib),
            str(params),
            str(inputs),
            str(outputs),
        ]
        if repeat:
            cmd += ["--repeat", str(int(repeat))]
        return cmd


def default_cache_dir() -> Path:
    """``$BANANA_CACHE``, else ``<repo>/.cache`` in a checkout, else ``~/.cache/banana``."""
    env = os.environ.get("BANANA_CACHE")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "targets" / "arm64").is_dir():
        return repo / ".cache"
    return Path.home() / ".cache" / "banana"


def _versions() -> dict[str, str]:
    out = {}
    for dist in (_TVM_DIST, _FFI_DIST):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = _FALLBACK_VERSIONS[dist]
    return out


def _runtime_key(versions: dict[str, str]) -> str:
    """Directory name: changes whenever the wheels or the runner source change."""
    digest = hashlib.sha256(RUNNER_SOURCE.read_bytes()).hexdigest()[:12]
    return f"tvm-{versions[_TVM_DIST]}_ffi-{versions[_FFI_DIST]}_runner-{digest}"


def _load(root: Path) -> Arm64Runtime | None:
    stamp = root / STAMP
    if not stamp.is_file():
        return None
    try:
        meta = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    rt = Arm64Runtime(
        root=root,
        lib_dir=root / "lib",
        include_dir=root / "include",
        runner=root / RUNNER_NAME,
        tvm_version=meta.get(_TVM_DIST, ""),
        ffi_version=meta.get(_FFI_DIST, ""),
    )
    needed = [rt.runner, rt.lib_dir / "libtvm_runtime.so", rt.lib_dir / "libtvm_ffi.so"]
    return rt if all(p.is_file() for p in needed) else None


def _find_wheel(folder: Path, dist: str, version: str) -> Path | None:
    """A complete (central directory readable) aarch64 wheel of ``dist==version`` in folder."""
    if not folder.is_dir():
        return None
    for whl in sorted(folder.glob(f"{_WHEEL_PREFIX[dist]}{version}-*aarch64*.whl")):
        try:
            with zipfile.ZipFile(whl) as z:
                z.getinfo(f"{_WHEEL_PREFIX[dist]}{version}.dist-info/RECORD")
        except (zipfile.BadZipFile, KeyError, OSError):
            continue
        return whl
    return None


def _download_wheels(wheel_dir: Path, versions: dict[str, str], scratch: Path) -> dict[str, Path]:
    """pip-download the aarch64 wheels into ``scratch`` and move the complete ones to wheel_dir."""
    found = {d: _find_wheel(wheel_dir, d, v) for d, v in versions.items()}
    missing = [d for d, w in found.items() if w is None]
    if missing:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", "--quiet",
            "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
            "--python-version", "3.11", "-d", str(scratch),
            *[f"{d}=={versions[d]}" for d in missing],
        ]  # fmt: skip
        logger.info("downloading arm64 wheels: %s", " ".join(f"{d}=={versions[d]}" for d in missing))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ToolchainError(f"pip download of arm64 wheels {', '.join(missing)} failed: {last}")
        wheel_dir.mkdir(parents=True, exist_ok=True)
        for d in missing:
            whl = _find_wheel(scratch, d, versions[d])
            if whl is None:
                raise ToolchainError(f"pip download produced no aarch64 wheel for {d}=={versions[d]}")
            os.replace(whl, wheel_dir / whl.name)
            found[d] = wheel_dir / whl.name
    return {d: w for d, w in found.items() if w is not None}


def _extract(wheels: dict[str, Path], dest: Path) -> None:
    (dest / "lib").mkdir(parents=True)
    for dist, member in _LIBS:
        with zipfile.ZipFile(wheels[dist]) as z, z.open(member) as src:
            with open(dest / "lib" / Path(member).name, "wb") as out:
                shutil.copyfileobj(src, out)
    with zipfile.ZipFile(wheels[_FFI_DIST]) as z:
        for info in z.infolist():
            if info.filename.startswith(_INCLUDE_PREFIX) and not info.is_dir():
                rel = Path(info.filename[len(_INCLUDE_PREFIX) :])
                if ".." in rel.parts or rel.is_absolute():
                    raise ToolchainError(f"{wheels[_FFI_DIST].name}: unsafe member path {info.filename}")
                target = dest / "include" / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)


def _build_runner(dest: Path) -> None:
    cross_compile(
        [RUNNER_SOURCE],
        dest / RUNNER_NAME,
        [
            "-std=c++17", "-O2", f"-I{dest / 'include'}", f"-L{dest / 'lib'}",
            "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,--as-needed",
            "-Wl,-rpath,$ORIGIN/lib",
        ],
    )  # fmt: skip


def _smoke_test(rt: Arm64Runtime) -> None:
    """Run the runner's --self-test under qemu: the libs load and register what it needs."""
    proc = subprocess.run(
        [*rt.qemu_command("cortex-a72"), str(rt.runner), "--self-test"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 or proc.stdout.strip() != "ok":
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ToolchainError(f"{rt.runner} fails its self-test under qemu-aarch64: {last}")


def ensure_runtime(cache_dir: Path | None = None) -> Arm64Runtime:
    """The arm64 runtime under ``<cache>/arm64/``, downloading and building it if needed."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    arm_dir = base / "arm64"
    versions = _versions()
    final = arm_dir / _runtime_key(versions)
    rt = _load(final)
    if rt is not None:
        return rt
    require_tool("aarch64-linux-gnu-g++")
    require_tool("qemu-aarch64")
    require_sysroot()
    arm_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=arm_dir) as tmp:
        scratch, staging = Path(tmp) / "dl", Path(tmp) / final.name
        scratch.mkdir()
        wheels = _download_wheels(arm_dir / "wheels", versions, scratch)
        _extract(wheels, staging)
        _build_runner(staging)
        staged = Arm64Runtime(
            root=staging,
            lib_dir=staging / "lib",
            include_dir=staging / "include",
            runner=staging / RUNNER_NAME,
            tvm_version=versions[_TVM_DIST],
            ffi_version=versions[_FFI_DIST],
        )
        _smoke_test(staged)
        (staging / STAMP).write_text(json.dumps({**versions, "key": final.name}))
        if final.exists():
            # Another process finished first, or a stale dir without stamp: keep a finished one.
            if _load(final) is not None:
                return _load(final)  # type: ignore[return-value]
            shutil.rmtree(final)
        try:
            os.rename(staging, final)
        except OSError:
            if _load(final) is None:
                raise
    rt = _load(final)
    if rt is None:
        raise ToolchainError(f"{final}: arm64 runtime incomplete after build")
    logger.info("arm64 runtime ready in %s", final)
    return rt


__all__ = ["Arm64Runtime", "SYSROOT", "default_cache_dir", "ensure_runtime"]
