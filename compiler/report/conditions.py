"""Fraction of a loop nest's iterations in which a TIR branch runs, by evaluating its conditions.

Hand-written kernels guard work with conditions on loop variables: a full register tile versus the
ragged last one, rows beyond ``m``, block predicates of split loops. Counting both arms of every
``if`` as if each ran on every iteration doubles a GEMM's work; counting one arm needs to know how
often it runs. The conditions are plain integer arithmetic on loop variables (and on variables bound
to such arithmetic), so they are evaluated here with numpy over every combination of the loop
variables they involve (or a seeded sample when that grid is large). Conditions that read memory
or call functions cannot be evaluated statically: :func:`branch_fraction` returns None and the
caller falls back to counting the arm fully.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm

_GRID_LIMIT = 1 << 20  # evaluate the whole grid up to this many points
_SAMPLES = 1 << 16  # else a seeded sample of this many points


class Unknown(Exception):
    """The condition is not integer arithmetic on known loop variables."""


@dataclass(frozen=True)
class Loop:
    var: Any
    min: int
    extent: int


class Scope:
    """Loop variables with their ranges and let-bound variables with their values, innermost last."""

    def __init__(self) -> None:
        self.loops: dict[int, Loop] = {}
        self.binds: dict[int, Any] = {}

    def copy(self) -> Scope:
        other = Scope()
        other.loops = dict(self.loops)
        other.binds = dict(self.binds)
        return other

    def with_loop(self, var: Any, lo: Any, extent: Any) -> Scope:
        other = self.copy()
        try:
            other.loops[var.__hash__()] = Loop(var, int(lo), int(extent))
        except (TypeError, ValueError):
            pass  # symbolic range: conditions on it become Unknown
        return other

    def bind(self, var: Any, value: Any) -> None:
        self.binds[var.__hash__()] = value

    def bind_scalar_buffer(self, buffer: Any, value: Any) -> None:
        """A one-element local buffer written with index math (TVMScript's ``jt = t // 4`` inside a
        block): later loads of it read that value, like a bound variable."""
        self.binds[_buffer_key(buffer)] = value


def _buffer_key(buffer: Any) -> int:
    """A buffer is a typed variable in this TIR (a store names it, a load's ``source`` is it)."""
    return buffer.__hash__()


def is_scalar_buffer(buffer: Any) -> bool:
    try:
        return math.prod(int(d) for d in buffer.shape) == 1
    except (TypeError, ValueError):
        return False


def _loop_vars(expr: Any, scope: Scope, found: dict[int, Loop], depth: int = 0) -> None:
    if depth > 64:
        raise Unknown("binding chain too deep")
    if isinstance(expr, tvm.tirx.Var):
        key = expr.__hash__()
        if key in scope.loops:
            found[key] = scope.loops[key]
        elif key in scope.binds:
            _loop_vars(scope.binds[key], scope, found, depth + 1)
        else:
            raise Unknown(f"free variable {expr}")
        return
    if isinstance(expr, tvm.ir.expr.TensorLoad):
        key = _buffer_key(expr.source)
        if key not in scope.binds:
            raise Unknown("load from memory")
        _loop_vars(scope.binds[key], scope, found, depth + 1)
        return
    for attr in ("a", "b", "condition", "true_value", "false_value", "value"):
        child = getattr(expr, attr, None)
        if child is not None and not isinstance(child, (int, float)) and hasattr(child, "ty"):
            _loop_vars(child, scope, found, depth + 1)
    if isinstance(expr, tvm.ir.expr.Call):
        for arg in expr.args:
            _loop_vars(arg, scope, found, depth + 1)


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "FloorDiv": np.floor_divide, "FloorMod": np.mod,
    "Min": np.minimum, "Max": np.maximum, "EQ": np.equal, "NE": np.not_equal, "LT": np.less,
    "LE": np.less_equal, "GT": np.greater, "GE": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
}


def _eval(expr: Any, scope: Scope, env: dict[int, np.ndarray]) -> Any:
    kind = type(expr).__name__
    if kind == "IntImm":
        return int(expr.value)
    if isinstance(expr, tvm.tirx.Var):
        key = expr.__hash__()
        if key in env:
            return env[key]
        if key in scope.binds:
            return _eval(scope.binds[key], scope, env)
        raise Unknown(f"free variable {expr}")
    if isinstance(expr, tvm.ir.expr.TensorLoad):
        key = _buffer_key(expr.source)
        if key in scope.binds:
            return _eval(scope.binds[key], scope, env)
        raise Unknown("load from memory")
    if kind in _BINARY:
        return _BINARY[kind](_eval(expr.a, scope, env), _eval(expr.b, scope, env))
    if kind == "Div":  # truncating integer division (TIR's Div on ints)
        a, b = _eval(expr.a, scope, env), _eval(expr.b, scope, env)
        return np.trunc(np.divide(a, b)).astype(np.int64)
    if kind == "Mod":
        a, b = _eval(expr.a, scope, env), _eval(expr.b, scope, env)
        return np.fmod(a, b)
    if kind == "Not":
        return np.logical_not(_eval(expr.a, scope, env))
    if kind == "Select":
        return np.where(_eval(expr.condition, scope, env), _eval(expr.true_value, scope, env),
                        _eval(expr.false_value, scope, env))
    if kind == "Cast" and "int" in str(expr.ty.dtype) or kind == "Cast" and "bool" in str(expr.ty.dtype):
        return _eval(expr.value, scope, env)
    if isinstance(expr, tvm.ir.expr.Call) and getattr(expr.op, "name", "") in ("tirx.likely", "tirx.if_then_else"):
        if expr.op.name == "tirx.likely":
            return _eval(expr.args[0], scope, env)
        return np.where(_eval(expr.args[0], scope, env), _eval(expr.args[1], scope, env),
                        _eval(expr.args[2], scope, env))
    raise Unknown(kind)


def branch_fraction(conditions: list[Any], scope: Scope) -> float | None:
    """Share of the enclosing loops' iterations in which every condition holds; None if not static."""
    if not conditions:
        return 1.0
    try:
        found: dict[int, Loop] = {}
        for cond in conditions:
            _loop_vars(cond, scope, found)
        loops = list(found.values())
        total = math.prod(loop.extent for loop in loops)
        env: dict[int, np.ndarray] = {}
        if total <= _GRID_LIMIT:
            for axis, loop in enumerate(loops):
                shape = [1] * len(loops)
                shape[axis] = loop.extent
                env[loop.var.__hash__()] = (np.arange(loop.extent, dtype=np.int64) + loop.min).reshape(shape)
        else:
            rng = np.random.default_rng(0)
            for loop in loops:
                env[loop.var.__hash__()] = rng.integers(loop.min, loop.min + loop.extent, _SAMPLES, dtype=np.int64)
        holds: Any = True
        with np.errstate(divide="ignore", invalid="ignore"):
            for cond in conditions:
                holds = np.logical_and(holds, _eval(cond, scope, env))
        return float(np.mean(np.broadcast_to(holds, np.broadcast_shapes(*(np.shape(v) for v in env.values()))
                                             if env else ())))
    except (Unknown, TypeError, ValueError, ZeroDivisionError):
        return None


def load_stride(load: Any, var: Any, scope: Scope) -> int | None:
    """Elements between the addresses a load reads at ``var`` = v and v + 1 (the other loop variables
    at their first iteration): 1 for a contiguous vector load, anything else for a gather.
    None when the index is not static arithmetic."""
    try:
        buffer = load.source
        shape = [int(d) for d in (getattr(buffer, "shape", None) or buffer.ty.shape)]
        strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
        offsets = []
        for step in (0, 1):
            env: dict[int, Any] = {}
            for key, loop in scope.loops.items():
                env[key] = loop.min
            env[var.__hash__()] = scope.loops[var.__hash__()].min + step
            offsets.append(sum(int(np.asarray(_eval(i, scope, env))) * st for i, st in zip(load.indices, strides,
                                                                                         strict=True)))
        return offsets[1] - offsets[0]
    except (Unknown, KeyError, TypeError, ValueError, AttributeError):
        return None
