"""The Backend protocol: what each way of running code on a SoC must provide.

The compiler core never special-cases a backend: it asks the registry for one by name and
calls these methods. Adding a backend = one module here plus its entry in the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from banana.compiler.artifact import Artifact
    from banana.compiler.frontend.importer import ImportedModel
    from banana.targets.soc import Soc


@dataclass
class BuildOutput:
    """What a backend wrote into the staging directory, for the manifest."""

    target: dict[str, Any]
    library: str | None
    executor: str  # "in-process" | "qemu-aarch64" | "pocl" | "none"
    run: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    description: str

    def target(self, soc: Soc) -> dict[str, Any]:
        """The TVM target JSON this backend generates code for on ``soc``."""
        ...

    def build(self, model: ImportedModel, soc: Soc, out_dir: Path) -> BuildOutput:
        """Compile ``model`` and write the library files into ``out_dir``."""
        ...

    def run(self, artifact: Artifact, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Execute a built artifact on this machine (natively, emulated or on PoCL)."""
        ...
