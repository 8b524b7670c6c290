"""The launch plan: the deployable description of an Adreno build.

TVM 0.27's wheel carries no OpenCL runtime, and a phone team wants to see exactly which kernels
run with which work sizes. So the artifact is plain data: ``kernels.cl`` (TVM's own OpenCL C for
every kernel) and ``launch_plan.json`` (buffers and an ordered list of kernel launches, i.e. the
Relax ``main`` after lowering). Any OpenCL host -- banana's PoCL executor, an Android app -- can
run it. The JSON is validated against ``launch_plan.schema.json`` on save and on load.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from banana.compiler.errors import ArtifactError

PLAN_FORMAT = "banana.opencl.launch_plan"
PLAN_FORMAT_VERSION = 1
KERNELS_FILE = "kernels.cl"
PLAN_FILE = "launch_plan.json"
SCHEMA_PATH = Path(__file__).with_name("launch_plan.schema.json")


@dataclass(frozen=True)
class KernelParam:
    """One parameter of an OpenCL kernel, in the order of the ``__kernel`` signature."""

    name: str
    kind: str  # "buffer" | "scalar"
    dtype: str


@dataclass(frozen=True)
class Kernel:
    """A ``__kernel`` function in kernels.cl and the Relax PrimFunc it came from."""

    name: str
    prim_func: str
    params: tuple[KernelParam, ...]
    schedule_rule: str | None = None


@dataclass(frozen=True)
class PlanBuffer:
    """A device buffer; views alias ``base`` (reshapes cost nothing)."""

    id: int
    name: str
    kind: str  # input | param | intermediate | workspace | constant | view
    shape: tuple[int, ...]
    dtype: str
    bytes: int
    index: int | None = None
    base: int | None = None
    data_base64: str | None = None

    def constant_value(self) -> np.ndarray:
        """Decode a constant buffer's little-endian bytes."""
        if self.data_base64 is None:
            raise ArtifactError(f"launch_plan.json: buffer {self.id} ({self.name}) has no constant data")
        raw = base64.b64decode(self.data_base64)
        if len(raw) != self.bytes:
            raise ArtifactError(f"launch_plan.json: constant buffer {self.id} has {len(raw)} bytes, not {self.bytes}")
        return np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<")).reshape(self.shape)


@dataclass(frozen=True)
class KernelArg:
    """A kernel argument: a buffer id or a literal scalar."""

    buffer: int | None = None
    scalar: int | float | None = None
    dtype: str | None = None


@dataclass(frozen=True)
class LaunchStep:
    """One ``clEnqueueNDRangeKernel``: global size = groups x local size, per dimension."""

    kernel: str
    global_work_size: tuple[int, ...]
    local_work_size: tuple[int, ...]
    args: tuple[KernelArg, ...]


@dataclass
class LaunchPlan:
    """Kernels source plus the launch program of one model; see the module docstring."""

    source: str
    kernels: list[Kernel]
    buffers: list[PlanBuffer]
    steps: list[LaunchStep]
    outputs: list[int]
    target: dict[str, Any]
    tvm_version: str = ""
    _by_name: dict[str, Kernel] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {k.name: k for k in self.kernels}

    # -- queries ---------------------------------------------------------------------------
    def kernel(self, name: str) -> Kernel:
        return self._by_name[name]

    def buffers_of_kind(self, kind: str) -> list[PlanBuffer]:
        """Buffers of one kind; inputs and params come back in call order."""
        found = [b for b in self.buffers if b.kind == kind]
        return sorted(found, key=lambda b: b.index if b.index is not None else b.id)

    def root(self, buffer_id: int) -> PlanBuffer:
        """The buffer owning the memory behind ``buffer_id`` (follows views)."""
        buf = self.buffers[buffer_id]
        while buf.kind == "view":
            buf = self.buffers[buf.base]  # type: ignore[index]
        return buf

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        def buf_json(b: PlanBuffer) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": b.id, "name": b.name, "kind": b.kind, "shape": list(b.shape),
                "dtype": b.dtype, "bytes": b.bytes,
            }
            for key in ("index", "base", "data_base64"):
                if getattr(b, key) is not None:
                    out[key] = getattr(b, key)
            return out

        def arg_json(a: KernelArg) -> dict[str, Any]:
            if a.buffer is not None:
                return {"buffer": a.buffer}
            return {"scalar": a.scalar, "dtype": a.dtype}

        def kernel_json(k: Kernel) -> dict[str, Any]:
            out: dict[str, Any] = {
                "name": k.name, "prim_func": k.prim_func,
                "params": [{"name": p.name, "kind": p.kind, "dtype": p.dtype} for p in k.params],
            }
            if k.schedule_rule is not None:
                out["schedule_rule"] = k.schedule_rule
            return out

        return {
            "format": PLAN_FORMAT,
            "format_version": PLAN_FORMAT_VERSION,
            "kernels_file": KERNELS_FILE,
            "kernels_sha256": hashlib.sha256(self.source.encode()).hexdigest(),
            "target": self.target,
            "tvm_version": self.tvm_version,
            "kernels": [kernel_json(k) for k in self.kernels],
            "buffers": [buf_json(b) for b in self.buffers],
            "steps": [
                {
                    "op": "launch", "kernel": s.kernel,
                    "global_work_size": list(s.global_work_size),
                    "local_work_size": list(s.local_work_size),
                    "args": [arg_json(a) for a in s.args],
                }
                for s in self.steps
            ],
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], source: str, where: str = PLAN_FILE) -> LaunchPlan:
        """Build a plan from validated JSON plus the kernels source; checks cross-references."""
        validate_plan_json(doc, where)
        if hashlib.sha256(source.encode()).hexdigest() != doc["kernels_sha256"]:
            raise ArtifactError(f"{where}: kernels_sha256 does not match {KERNELS_FILE}")
        plan = cls(
            source=source,
            kernels=[
                Kernel(
                    name=k["name"], prim_func=k["prim_func"], schedule_rule=k.get("schedule_rule"),
                    params=tuple(KernelParam(p["name"], p["kind"], p["dtype"]) for p in k["params"]),
                )
                for k in doc["kernels"]
            ],
            buffers=[
                PlanBuffer(
                    id=b["id"], name=b["name"], kind=b["kind"], shape=tuple(b["shape"]), dtype=b["dtype"],
                    bytes=b["bytes"], index=b.get("index"), base=b.get("base"), data_base64=b.get("data_base64"),
                )
                for b in doc["buffers"]
            ],
            steps=[
                LaunchStep(
                    kernel=s["kernel"],
                    global_work_size=tuple(s["global_work_size"]),
                    local_work_size=tuple(s["local_work_size"]),
                    args=tuple(_arg_from_json(a) for a in s["args"]),
                )
                for s in doc["steps"]
            ],
            outputs=list(doc["outputs"]),
            target=doc["target"],
            tvm_version=doc.get("tvm_version", ""),
        )
        plan.check(where)
        return plan

    def check(self, where: str = PLAN_FILE) -> None:
        """Cross-reference checks a JSON schema cannot express; raises ArtifactError."""
        n = len(self.buffers)
        for i, b in enumerate(self.buffers):
            if b.id != i:
                raise ArtifactError(f"{where}: buffers[{i}] has id {b.id}; ids must equal positions")
            expect = int(np.prod(b.shape, dtype=np.int64)) * np.dtype(b.dtype).itemsize
            if b.bytes != expect:
                raise ArtifactError(f"{where}: buffer {i} ({b.name}) says {b.bytes} bytes, shape needs {expect}")
            if b.kind == "view":
                if b.base is None or not 0 <= b.base < i:
                    raise ArtifactError(f"{where}: view buffer {i} ({b.name}) has bad base {b.base}")
                if self.buffers[b.base].bytes != b.bytes:
                    raise ArtifactError(f"{where}: view buffer {i} ({b.name}) size differs from its base")
        for kind in ("input", "param"):
            idx = [b.index for b in self.buffers_of_kind(kind)]
            if idx != list(range(len(idx))):
                raise ArtifactError(f"{where}: {kind} buffers have indices {idx}, expected 0..{len(idx) - 1}")
        for si, s in enumerate(self.steps):
            k = self._by_name.get(s.kernel)
            if k is None:
                raise ArtifactError(f"{where}: steps[{si}] launches unknown kernel {s.kernel!r}")
            if len(s.args) != len(k.params):
                raise ArtifactError(
                    f"{where}: steps[{si}] passes {len(s.args)} args to {s.kernel} ({len(k.params)} params)"
                )
            if len(s.global_work_size) != len(s.local_work_size) or any(
                g % loc for g, loc in zip(s.global_work_size, s.local_work_size, strict=True)
            ):
                raise ArtifactError(f"{where}: steps[{si}] global work size is not a multiple of the local size")
            for ai, (a, p) in enumerate(zip(s.args, k.params, strict=True)):
                if (a.buffer is not None) != (p.kind == "buffer"):
                    raise ArtifactError(f"{where}: steps[{si}] arg {ai} does not match {s.kernel} param {p.name}")
                if a.buffer is not None and not 0 <= a.buffer < n:
                    raise ArtifactError(f"{where}: steps[{si}] arg {ai} names unknown buffer {a.buffer}")
        for o in self.outputs:
            if not 0 <= o < n:
                raise ArtifactError(f"{where}: output names unknown buffer {o}")
        for k in self.kernels:
            if f"__kernel void {k.name}(" not in self.source:
                raise ArtifactError(f"{KERNELS_FILE}: kernel {k.name} named in the plan is missing")

    # -- files -----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write kernels.cl and launch_plan.json into ``directory`` atomically (temp + rename)."""
        doc = self.to_json()
        validate_plan_json(doc, PLAN_FILE)
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / KERNELS_FILE, self.source)
        _atomic_write(out / PLAN_FILE, json.dumps(doc, indent=1) + "\n")
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> LaunchPlan:
        """Read and validate a plan directory written by :meth:`save`."""
        d = Path(directory)
        plan_path, src_path = d / PLAN_FILE, d / KERNELS_FILE
        for p in (plan_path, src_path):
            if not p.is_file():
                raise ArtifactError(f"{p}: missing from the OpenCL artifact")
        try:
            doc = json.loads(plan_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArtifactError(f"{plan_path}: not valid JSON ({err})") from err
        return cls.from_json(doc, src_path.read_text(encoding="utf-8"), where=str(plan_path))


def _arg_from_json(a: dict[str, Any]) -> KernelArg:
    if "buffer" in a:
        return KernelArg(buffer=a["buffer"])
    return KernelArg(scalar=a["scalar"], dtype=a["dtype"])


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_plan_json(doc: Any, where: str = PLAN_FILE) -> None:
    """Raise ArtifactError naming the first schema violation (JSON path and message)."""
    errors = sorted(_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = "/".join(str(p) for p in err.absolute_path) or "<root>"
        message = " ".join(err.message.split())
        if len(message) > 160:
            message = message[:157] + "..."
        raise ArtifactError(f"{where}: schema violation at {path}: {message}")


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
