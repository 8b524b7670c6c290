"""JSON Schemas for every JSON file banana writes; validated on write and on read."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text()
    return json.loads(text)


def validation_errors(document: Any, name: str) -> list[str]:
    """All violations, each as 'field.path: message', so callers can report them in one line."""
    validator = jsonschema.Draft202012Validator(load_schema(name))
    problems = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in error.absolute_path) or "<root>"
        problems.append(f"{where}: {error.message}")
    return problems
