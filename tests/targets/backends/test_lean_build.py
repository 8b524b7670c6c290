"""The lean CPU build (targets.backends.host): smaller libraries that load, run and check what they did."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from banana.compiler.artifact import Artifact
from banana.compiler.pipeline import compile_model


def elf_section_names(path: Path) -> set[str]:
    """Section names of a 64-bit little-endian ELF file (enough of the format for this check)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    str_offset = headers[shstrndx][4]
    names = set()
    for name_offset, *_ in headers:
        start = str_offset + name_offset
        names.add(data[start:data.index(b"\0", start)].decode())
    return names


def load_segments(path: Path) -> int:
    """Number of PT_LOAD program headers of a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return sum(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 1 for i in range(phnum))


def assert_lean(library: Path) -> None:
    sections = elf_section_names(library)
    assert ".dynsym" in sections and ".text" in sections
    assert ".symtab" not in sections, "static symbol table left in"
    assert not {s for s in sections if s.startswith(".debug")}, "DWARF left in"


def test_host_library_is_stripped_and_still_verifies(mlp_onnx: Path, tmp_path: Path) -> None:
    result = compile_model(mlp_onnx, backend="host", out=tmp_path / "a", verify=True)
    assert result.verify is not None and result.verify.executed and result.verify.ok
    assert result.manifest["target"]["opt-level"] == 2
    assert_lean(tmp_path / "a" / "model.so")
    # -z noseparate-code: code and read-only data share one segment (no 4 KiB padding between them)
    assert load_segments(tmp_path / "a" / "model.so") == 2


def test_cpu_library_is_stripped_and_still_verifies_under_qemu(mlp_onnx: Path, tmp_path: Path) -> None:
    result = compile_model(mlp_onnx, backend="cpu", soc="SM8650", out=tmp_path / "a", verify=True)
    assert result.verify is not None and result.verify.executed and result.verify.ok
    assert (tmp_path / "a" / "model.so").read_bytes()[18] == 183  # EM_AARCH64
    assert_lean(tmp_path / "a" / "model.so")


def test_vm_still_checks_every_weight_without_kernel_asserts(mlp_onnx: Path, tmp_path: Path) -> None:
    """The kernels' own argument asserts are gone, so the VM must reject a bad weight by name."""
    import tvm
    from tvm import relax

    result = compile_model(mlp_onnx, backend="host", out=tmp_path / "a")
    artifact = Artifact.open(result.artifact_dir)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact.path("model.so"))), tvm.cpu())
    inputs = [np.zeros(s.shape, s.dtype) for s in artifact.inputs]
    weights = artifact.load_weights()
    names = artifact.manifest["weights"]["names"]

    def call(ws: list[np.ndarray]) -> None:
        vm["main"](*[tvm.runtime.tensor(np.require(a, requirements="C")) for a in [*inputs, *ws]])

    call(weights)
    i = max(range(len(weights)), key=lambda j: weights[j].ndim)  # a matrix
    wrong_shape = [*weights[:i], weights[i][..., :-1].copy(), *weights[i + 1:]]
    with pytest.raises(Exception, match=names[i]):
        call(wrong_shape)
    wrong_dtype = [*weights[:i], weights[i].astype(np.float64), *weights[i + 1:]]
    with pytest.raises(Exception, match=names[i]):
        call(wrong_dtype)
