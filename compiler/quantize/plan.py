"""plan.json: every layer's precision, scales and the measured fidelity, schema-checked both ways.

The file is deterministic (sorted keys, rounded floats, no timestamps): the same model, seed and
options give byte-identical plans, which is how ``banana quantize`` shows it resumed nothing.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from banana.compiler.errors import BadConfigError

PLAN_FILE = "plan.json"


@cache
def plan_schema() -> dict[str, Any]:
    return json.loads(resources.files(__package__).joinpath("plan.schema.json").read_text())


def _check(plan: dict[str, Any], where: str) -> None:
    validator = jsonschema.Draft202012Validator(plan_schema())
    errors = sorted(validator.iter_errors(plan), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        field = ".".join(str(p) for p in e.absolute_path) or "<root>"
        raise BadConfigError(f"{where}: plan field {field}: {e.message.splitlines()[0]} ({len(errors)} problems)")


def round_floats(obj: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits, recursively (stable text across platforms)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v, digits) for v in obj]
    return obj


def write_plan(plan: dict[str, Any], path: Path) -> Path:
    """Validate and write ``plan`` atomically."""
    plan = round_floats(plan)
    _check(plan, str(path))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def read_plan(path: Path) -> dict[str, Any]:
    """Read and validate a plan file."""
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadConfigError(f"{path}: cannot read plan: {str(e).splitlines()[0]}") from None
    _check(plan, str(path))
    return plan
