"""Backend registry: names to classes, imported lazily so one backend's toolchain never
burdens another's start-up."""

from __future__ import annotations

import importlib

from banana.compiler.errors import BadConfigError
from banana.targets.backends.base import Backend, BuildOutput

_REGISTRY = {
    "host": "banana.targets.backends.host:HostBackend",
    "cpu": "banana.targets.backends.cpu:CpuBackend",
    "adreno": "banana.targets.backends.adreno:AdrenoBackend",
    "hexagon": "banana.targets.backends.hexagon:HexagonBackend",
}


def backend_names() -> list[str]:
    return list(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise BadConfigError(f"unknown backend '{name}'; known: {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


__all__ = ["Backend", "BuildOutput", "backend_names", "get_backend"]
