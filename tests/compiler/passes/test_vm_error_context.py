"""Short VM error contexts: the parameter checks stay, their strings shrink, errors still name the parameter."""

from __future__ import annotations

from pathlib import Path

from banana.compiler.passes.vm_error_context import short_context
from banana.compiler.pipeline import compile_model


def test_parameter_context_keeps_function_location_and_name() -> None:
    text = ('ErrorContext(fn=main, loc=param[14], param=banana_int_0_w, '
            'annotation=R.Tensor((128, 16), dtype="int8")) ')
    assert short_context(text) == "main param[14] banana_int_0_w:"
    assert short_context("ErrorContext(fn=main, loc=param[0], param=blocks.0.norm2.weight, "
                         "annotation=R.Tensor((128,), dtype=\"float32\")) ") == "main param[0] blocks.0.norm2.weight:"


def test_other_strings_are_unchanged() -> None:
    for text in ("ErrorContext(fn=main, loc=return, annotation=R.Tensor((1,), dtype=\"float32\")) ", "global", ""):
        assert short_context(text) == text


def test_library_holds_only_short_contexts(mlp_onnx: Path, tmp_path: Path) -> None:
    """The lean build checks every weight (tests/targets/backends/test_lean_build.py checks the names)."""
    compile_model(mlp_onnx, backend="host", out=tmp_path / "a")
    data = (tmp_path / "a" / "model.so").read_bytes()
    assert b"annotation=R.Tensor" not in data
    assert b"main param[0] " in data
