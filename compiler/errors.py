"""One exception hierarchy for everything banana reports to a user.

The CLI turns any ``BananaError`` into a single line on stderr and exit code 2 (verification
mismatches use their own code), so messages must name the offending file, node or field and
read well on one line. Anything that is not a ``BananaError`` is a bug and keeps its traceback.
"""

from __future__ import annotations


class BananaError(Exception):
    """Base of all user-facing errors; ``exit_code`` is what the CLI exits with."""

    exit_code: int = 2


class BadModelError(BananaError):
    """The model file is unreadable, truncated, not ONNX, or structurally invalid."""


class UnsupportedOpError(BananaError):
    """The graph contains operators banana cannot compile (all of them are listed at once)."""


class BadConfigError(BananaError):
    """A command-line option, shape override, SoC/backend name or config file is wrong."""


class ToolchainError(BananaError):
    """A required external tool (cross compiler, qemu, PoCL) is missing or failed."""


class ArtifactError(BananaError):
    """An artifact directory is incomplete, tampered with (checksum mismatch) or invalid."""


class VerificationError(BananaError):
    """Outputs of a compiled artifact differ from the reference beyond tolerance."""

    exit_code = 3
